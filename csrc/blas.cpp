// Loads SciPy's BLAS/LAPACK capsules and wraps them with row-major helpers.
#include "blas.hpp"

#include <pybind11/pybind11.h>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#define FASTAMORT_HAS_DLFCN 1
#elif defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#define NOMINMAX
#include <windows.h>
#endif

#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace py = pybind11;

namespace fastamort::blas {
namespace {

using gemm_f = void(const char*, const char*, const int*, const int*, const int*, const void*,
                    const void*, const int*, const void*, const int*, const void*, void*,
                    const int*);
using syrk_f = void(const char*, const char*, const int*, const int*, const void*, const void*,
                    const int*, const void*, void*, const int*);
using potrf_f = void(const char*, const int*, void*, const int*, int*);
using potrs_f = void(const char*, const int*, const int*, const void*, const int*, void*,
                     const int*, int*);
using trsm_f = void(const char*, const char*, const char*, const char*, const int*, const int*,
                    const void*, const void*, const int*, void*, const int*);

using set_threads_f = void(int);
using get_threads_f = int();

struct Table {
  gemm_f* gemm[2] = {nullptr, nullptr};  // [0] float, [1] double
  syrk_f* syrk[2] = {nullptr, nullptr};
  potrf_f* potrf[2] = {nullptr, nullptr};
  potrs_f* potrs[2] = {nullptr, nullptr};
  trsm_f* trsm[2] = {nullptr, nullptr};
  set_threads_f* set_threads = nullptr;
  get_threads_f* get_threads = nullptr;
  std::string threads_symbol;
  std::string source = "scipy.linalg.cython_blas/cython_lapack capsules";
  bool ok = false;
  bool mkl_gemm = false;  // gemm taken from torch's MKL
};

Table g_table;

// The BLAS thread count is process-wide: SingleThreaded guards share this state.
std::mutex g_threads_mutex;
int g_single_users = 0;   // live guards
int g_saved_threads = 1;  // the count before the first live guard

void* capsule_pointer(const py::dict& capi, const char* name, const char* module) {
  if (!capi.contains(name)) {
    throw std::runtime_error(std::string("fastamort._C: ") + module + " does not export '" +
                             name + "'");
  }
  py::object cap = capi[name];
  const char* cap_name = PyCapsule_GetName(cap.ptr());
  void* ptr = PyCapsule_GetPointer(cap.ptr(), cap_name);
  if (ptr == nullptr) {
    throw py::error_already_set();
  }
  return ptr;
}

template <class T>
constexpr int slot() {
  return sizeof(T) == sizeof(double) ? 1 : 0;
}

// Finds the BLAS's thread-count setters by looking up symbols from the shared library that
// holds the gemm we were given. Without such a lookup (a platform with neither dlfcn.h nor
// Win32) the BLAS keeps its own thread count and thread_control() is false.
const char* const kThreadPrefixes[] = {"scipy_openblas", "openblas"};

template <class Lookup>
void take_thread_control(Lookup lookup) {
  for (const char* prefix : kThreadPrefixes) {
    const std::string set_name = std::string(prefix) + "_set_num_threads";
    const std::string get_name = std::string(prefix) + "_get_num_threads";
    void* set_fn = lookup(set_name.c_str());
    void* get_fn = lookup(get_name.c_str());
    if (set_fn != nullptr && get_fn != nullptr) {
      g_table.set_threads = reinterpret_cast<set_threads_f*>(set_fn);
      g_table.get_threads = reinterpret_cast<get_threads_f*>(get_fn);
      g_table.threads_symbol = set_name;
      return;
    }
  }
}

void find_thread_control(void* blas_function) {
#if defined(FASTAMORT_HAS_DLFCN)
  // dlsym on a handle also searches the library's dependencies.
  Dl_info info;
  if (dladdr(blas_function, &info) == 0 || info.dli_fname == nullptr) return;
  void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return;
  take_thread_control([handle](const char* name) { return dlsym(handle, name); });
  dlclose(handle);
#elif defined(_WIN32)
  HMODULE module = nullptr;
  const DWORD flags =
      GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT;
  if (!GetModuleHandleExA(flags, reinterpret_cast<LPCSTR>(blas_function), &module)) return;
  take_thread_control([module](const char* name) {
    return reinterpret_cast<void*>(GetProcAddress(module, name));
  });
#else
  (void)blas_function;
#endif
}

// The BLAS inside torch's own library, when it is Intel MKL (x86-64 Linux wheels link it
// statically and export its Fortran symbols). MKL's GEMM, TRSM and POTRF are faster than
// SciPy's OpenBLAS on x86-64 (bench/bench_gram.py and `fastamort bench step` re-measure it),
// and they are what the benchmarks' floor (torch's own routines) runs on. Taken without a
// link step: dlopen of the already-loaded libtorch_cpu with RTLD_NOLOAD. SYRK (not exported)
// stays SciPy's. MKL called inside one of our OpenMP regions runs on one thread by itself
// (MKL_DYNAMIC); SingleThreaded keeps guarding OpenBLAS. FASTAMORT_BLAS=scipy skips this.
void take_torch_mkl() {
#if defined(FASTAMORT_HAS_DLFCN)
  const char* choice = std::getenv("FASTAMORT_BLAS");
  if (choice != nullptr && std::string(choice) == "scipy") return;
  void* handle = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return;
  auto sym = [handle](const std::string& name) { return dlsym(handle, name.c_str()); };
  const char* prefixes[2] = {"s", "d"};
  bool ok = sym("MKL_Get_Max_Threads") != nullptr;
  void* found[2][4] = {};
  for (int i = 0; i < 2 && ok; ++i) {
    const std::string p = prefixes[i];
    const std::string names[4] = {p + "gemm_", p + "trsm_", p + "potrf_", p + "potrs_"};
    for (int f = 0; f < 4; ++f) ok = ok && (found[i][f] = sym(names[f])) != nullptr;
  }
  dlclose(handle);  // torch keeps the library loaded
  if (!ok) return;
  for (int i = 0; i < 2; ++i) {
    g_table.gemm[i] = reinterpret_cast<gemm_f*>(found[i][0]);
    g_table.trsm[i] = reinterpret_cast<trsm_f*>(found[i][1]);
    g_table.potrf[i] = reinterpret_cast<potrf_f*>(found[i][2]);
    g_table.potrs[i] = reinterpret_cast<potrs_f*>(found[i][3]);
  }
  g_table.mkl_gemm = true;
  g_table.source = "torch's Intel MKL (gemm, trsm, potrf, potrs; libtorch_cpu) and " +
                   g_table.source + " (syrk)";
#endif
}

}  // namespace

void load() {
  if (g_table.ok) return;
  const char* blas_mod = "scipy.linalg.cython_blas";
  const char* lapack_mod = "scipy.linalg.cython_lapack";
  py::dict blas = py::module_::import(blas_mod).attr("__pyx_capi__");
  py::dict lapack = py::module_::import(lapack_mod).attr("__pyx_capi__");
  const char* prefixes[2] = {"s", "d"};
  for (int i = 0; i < 2; ++i) {
    std::string p = prefixes[i];
    g_table.gemm[i] = reinterpret_cast<gemm_f*>(capsule_pointer(blas, (p + "gemm").c_str(), blas_mod));
    g_table.syrk[i] = reinterpret_cast<syrk_f*>(capsule_pointer(blas, (p + "syrk").c_str(), blas_mod));
    g_table.trsm[i] = reinterpret_cast<trsm_f*>(capsule_pointer(blas, (p + "trsm").c_str(), blas_mod));
    g_table.potrf[i] =
        reinterpret_cast<potrf_f*>(capsule_pointer(lapack, (p + "potrf").c_str(), lapack_mod));
    g_table.potrs[i] =
        reinterpret_cast<potrs_f*>(capsule_pointer(lapack, (p + "potrs").c_str(), lapack_mod));
  }
  find_thread_control(reinterpret_cast<void*>(g_table.gemm[1]));
  py::module_::import("torch");  // libtorch_cpu loaded, whoever imports us first
  take_torch_mkl();
  g_table.ok = true;
}

bool loaded() { return g_table.ok; }

bool gemm_is_mkl() { return g_table.mkl_gemm; }

bool thread_control() { return g_table.set_threads != nullptr; }

std::string describe() {
  if (!g_table.ok) return "not loaded";
  std::string s = g_table.source;
  s += thread_control() ? " (thread control: " + g_table.threads_symbol + ")"
                        : " (no thread control found)";
  return s;
}

SingleThreaded::SingleThreaded() {
  if (g_table.set_threads == nullptr) return;
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (g_single_users++ == 0) {
    g_saved_threads = g_table.get_threads();
    if (g_saved_threads != 1) g_table.set_threads(1);
  }
}

SingleThreaded::~SingleThreaded() {
  if (g_table.set_threads == nullptr) return;
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (--g_single_users == 0 && g_saved_threads != 1) g_table.set_threads(g_saved_threads);
}

int num_threads() {
  if (g_table.get_threads == nullptr) return -1;
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  return g_table.get_threads();
}

template <class T>
void gemm(char trans_a, char trans_b, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc) {
  if (m == 0 || n == 0) return;
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ with the same flags.
  g_table.gemm[slot<T>()](&trans_b, &trans_a, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c,
                          &ldc);
}

template <class T>
void syrk_lower(int n, int k, T alpha, const T* a, int lda, T beta, T* c, int ldc) {
  if (n == 0) return;
  // Row-major lower triangle == column-major upper triangle of (Aᵀ)ᵀ(Aᵀ).
  const char uplo = 'U', trans = 'T';
  g_table.syrk[slot<T>()](&uplo, &trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc);
}

template <class T>
int potrf_lower(int n, T* a, int lda) {
  if (n == 0) return 0;
  // Row-major lower == column-major upper.
  const char uplo = 'U';
  int info = 0;
  g_table.potrf[slot<T>()](&uplo, &n, a, &lda, &info);
  return info;
}

template <class T>
int potrs_lower(int n, int nrhs, const T* l, int ldl, T* b, int ldb) {
  if (n == 0 || nrhs == 0) return 0;
  // Row-major B (n×nrhs) is column-major Bᵀ (nrhs×n); solve Xᵀ (LLᵀ) = Bᵀ instead by
  // two triangular solves from the right. LAPACK potrs only solves from the left, so
  // use trsm: Xᵀ·L·Lᵀ = Bᵀ  <=>  first Yᵀ = Bᵀ·L⁻ᵀ, then Xᵀ = Yᵀ·L⁻¹.
  // In column-major terms L (row-major lower) is U = Lᵀ (upper, column-major).
  const char side = 'R', uplo = 'U', diag = 'N';
  const T one = T(1);
  const char no = 'N', tr = 'T';
  // Bᵀ·L⁻ᵀ = Bᵀ·U⁻¹  (U = Lᵀ column-major, op = N)
  g_table.trsm[slot<T>()](&side, &uplo, &no, &diag, &nrhs, &n, &one, l, &ldl, b, &ldb);
  // Yᵀ·L⁻¹ = Yᵀ·U⁻ᵀ  (op = T)
  g_table.trsm[slot<T>()](&side, &uplo, &tr, &diag, &nrhs, &n, &one, l, &ldl, b, &ldb);
  return 0;
}

template <class T>
void trsm_left_lower(char trans, int n, int nrhs, T alpha, const T* l, int ldl, T* b, int ldb) {
  if (n == 0 || nrhs == 0) return;
  // Row-major op(L)·X = B  <=>  column-major Xᵀ·op(L)ᵀ = Bᵀ, and the column-major view of
  // the row-major lower L is U = Lᵀ. So op(L)ᵀ = op(Uᵀ)ᵀ: op(L)=L -> U (N); op(L)=Lᵀ -> Uᵀ (T).
  const char side = 'R', uplo = 'U', diag = 'N';
  const char t = (trans == 'N' || trans == 'n') ? 'N' : 'T';
  g_table.trsm[slot<T>()](&side, &uplo, &t, &diag, &nrhs, &n, &alpha, l, &ldl, b, &ldb);
}

template <class T>
void trsm_right_lower(char trans, int m, int n, T alpha, const T* l, int ldl, T* b, int ldb) {
  if (m == 0 || n == 0) return;
  // Row-major X·op(L) = B  <=>  column-major op(L)ᵀ·Xᵀ = Bᵀ (Bᵀ: N×M, leading dimension
  // ldb), and the column-major view of the row-major lower L is U = Lᵀ. So op(L)ᵀ is
  // U (op(L) = L) or Uᵀ (op(L) = Lᵀ): a left-side solve with the same flag.
  const char side = 'L', uplo = 'U', diag = 'N';
  const char t = (trans == 'N' || trans == 'n') ? 'N' : 'T';
  g_table.trsm[slot<T>()](&side, &uplo, &t, &diag, &n, &m, &alpha, l, &ldl, b, &ldb);
}

template void gemm<float>(char, char, int, int, int, float, const float*, int, const float*, int,
                          float, float*, int);
template void gemm<double>(char, char, int, int, int, double, const double*, int, const double*,
                           int, double, double*, int);
template void syrk_lower<float>(int, int, float, const float*, int, float, float*, int);
template void syrk_lower<double>(int, int, double, const double*, int, double, double*, int);
template int potrf_lower<float>(int, float*, int);
template int potrf_lower<double>(int, double*, int);
template int potrs_lower<float>(int, int, const float*, int, float*, int);
template int potrs_lower<double>(int, int, const double*, int, double*, int);
template void trsm_left_lower<float>(char, int, int, float, const float*, int, float*, int);
template void trsm_left_lower<double>(char, int, int, double, const double*, int, double*, int);
template void trsm_right_lower<float>(char, int, int, float, const float*, int, float*, int);
template void trsm_right_lower<double>(char, int, int, double, const double*, int, double*,
                                       int);

}  // namespace fastamort::blas
