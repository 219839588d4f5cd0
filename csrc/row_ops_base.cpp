// Row kernels for the baseline instruction set of the target (SSE2 on x86-64).
#define FASTAMORT_VEC_BYTES 16
#define FASTAMORT_ISA_NS isa_base
#define FASTAMORT_ISA_NAME "baseline"
#include "row_ops_impl.hpp"
