/* Times NAME_run of the MLP libraries bench/aot/run.sh builds (batch 1
 * and 128): 20 warm-up calls, then 200 timed one by one; prints the
 * median and the minimum in ms. Also times loading: dlopen + NAME_new +
 * the first NAME_run, in a fresh process (`mlp_run load LIB NEW RUN`).
 * `mlp_run rows LIB NEW RUN B` times a library whose batch takes any
 * size (NAME_run(m, B, x, y)) at B rows. `mlp_run contexts LIB NEW RUN`
 * measures what 8 execution contexts (NAME_context_new), each run once,
 * add to the process's peak resident memory. */
#define _XOPEN_SOURCE 700
#include <dlfcn.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUNS 200

typedef void *(*new_fn)(void);
typedef int (*run_fn)(void *, const float *, float *);
typedef int (*rows_fn)(void *, size_t, const float *, float *);

/* The call being timed: a fixed-batch NAME_run, or an any-size one at
 * `rows` rows. */
static run_fn fixed;
static rows_fn any;
static size_t rows;

static int call(void *m, const float *x, float *y) {
    return any ? any(m, rows, x, y) : fixed(m, x, y);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "%s: %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    static float x[128 * 784], y[128 * 10];
    int by_rows = argc == 6 && strcmp(argv[1], "rows") == 0;
    if (argc != 5 && !by_rows) {
        fprintf(stderr, "usage: %s time|load|contexts LIB.so NAME_new NAME_run | rows LIB.so NAME_new NAME_run B\n", argv[0]);
        return 2;
    }
    if (by_rows) {
        rows = (size_t)atoi(argv[5]);
        if (rows < 1 || rows > 128) return 2;
    }
    for (int i = 0; i < 128 * 784; i++) x[i] = (float)(i % 13) / 13.0f;
    double t0 = now();
    void *lib = dlopen(argv[2], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    new_fn mnew = (new_fn)sym(lib, argv[3]);
    if (by_rows)
        any = (rows_fn)sym(lib, argv[4]);
    else
        fixed = (run_fn)sym(lib, argv[4]);
    void *m = mnew();
    if (!m || call(m, x, y) != 0) return 1;
    double t1 = now();
    if (strcmp(argv[1], "load") == 0) {
        printf("%s: load + first run %.2f ms\n", argv[2], (t1 - t0) * 1e3);
        return 0;
    }
    if (strcmp(argv[1], "contexts") == 0) {
        /* NAME_context_new, from NAME_new's name. */
        char name[256];
        size_t stem = strlen(argv[3]) - strlen("new");
        if (stem + strlen("context_new") >= sizeof name) return 2;
        memcpy(name, argv[3], stem);
        strcpy(name + stem, "context_new");
        typedef void *(*ctx_fn)(const void *);
        ctx_fn ctx = (ctx_fn)sym(lib, name);
        struct rusage u;
        getrusage(RUSAGE_SELF, &u);
        long before = u.ru_maxrss;
        for (int i = 0; i < 8; i++) {
            void *c = ctx(m);
            if (!c || call(c, x, y) != 0) return 1;
        }
        getrusage(RUSAGE_SELF, &u);
        printf("%s: 8 contexts, each run once, add %ld KiB to the peak resident %ld KiB\n",
               argv[2], u.ru_maxrss - before, before);
        return 0;
    }
    static double t[RUNS];
    for (int i = 0; i < 20; i++) call(m, x, y);
    for (int i = 0; i < RUNS; i++) {
        double s = now();
        call(m, x, y);
        t[i] = now() - s;
    }
    qsort(t, RUNS, sizeof(double), cmp);
    if (by_rows)
        printf("%s at B = %zu: median %.4f ms, min %.4f ms\n", argv[2], rows, t[RUNS / 2] * 1e3,
               t[0] * 1e3);
    else
        printf("%s: median %.4f ms, min %.4f ms\n", argv[2], t[RUNS / 2] * 1e3, t[0] * 1e3);
    return 0;
}
