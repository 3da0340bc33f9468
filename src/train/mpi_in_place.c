/* MPI_IN_PLACE for nnc's in-place all-reduce (src/train/dist.rs). It is a
   macro whose value differs between MPI implementations, and the mpi
   crate does not export it; built by build.rs with the `mpi` feature. */
#include <mpi.h>

void *nnc_mpi_in_place(void) { return MPI_IN_PLACE; }
