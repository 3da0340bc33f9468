/* Classifies the 8x8 handwritten digits with a library compiled by nnc,
 * one image at a time: no nnc, JIT or Python at run time.
 *
 *   nnc train examples/digits_mlp.nn --save digits.safetensors
 *   nnc compile examples/digits_mlp.nn --params digits.safetensors --dim B=1 -o digits.so
 *   cc -std=c99 -Wall -I. -o classify examples/aot/digits.c ./digits.so -Wl,-rpath,'$ORIGIN'
 *   ./classify examples/data/digits.csv
 *
 * The CSV has a header, 64 pixel columns (0..16) and the label; the
 * model was trained on pixels scaled by 1/16, as its `train` block says,
 * so the program scales them the same way. It prints the accuracy over
 * every row (the training rows included: the validation rows are a
 * seeded shuffle of nnc's).
 */
#include <stdio.h>
#include <stdlib.h>
#include "digits.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s digits.csv\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    digits_model *m = digits_new();
    if (!m) {
        fprintf(stderr, "digits_new: %s\n", digits_last_error());
        return 1;
    }
    /* The batch was fixed to one row at compile time (--dim B=1). */
    float x[DIGITS_MLP_X_LEN], scores[DIGITS_PREDICT_LEN];
    int c;
    while ((c = fgetc(f)) != '\n' && c != EOF) { /* skip the header */ }
    int rows = 0, right = 0;
    for (;;) {
        int label, ok = 1;
        for (int i = 0; i < DIGITS_MLP_X_LEN && ok; i++) {
            float v;
            ok = fscanf(f, "%f,", &v) == 1;
            x[i] = v / 16.0f;
        }
        if (!ok || fscanf(f, "%d", &label) != 1) break;
        if (digits_run(m, x, scores) != DIGITS_OK) {
            fprintf(stderr, "digits_run: %s\n", digits_last_error());
            return 1;
        }
        int best = 0;
        for (int k = 1; k < DIGITS_PREDICT_LEN; k++)
            if (scores[k] > scores[best]) best = k;
        right += best == label;
        rows++;
    }
    fclose(f);
    digits_free(m);
    printf("%d rows, %d classified right: accuracy %.4f\n", rows, right,
           rows ? (double)right / rows : 0.0);
    return 0;
}
