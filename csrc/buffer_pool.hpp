// Large buffers for the engines: workspaces and the arrays the bindings return.
//
// A fresh M×M buffer costs as much as the work done in it: the kernel maps it one 4 KiB page
// at a time on first touch (a page fault each; measured on a 2-core x86-64 VM, M = 2000
// float32: a ridge solve with its 16 MiB factor copy took 26 ms in a learner step against
// 19 ms with the pages already mapped), and std::vector writes zeros over it first. The
// learner allocates the same few sizes every step, so buffers of at least kPooledMinBytes
// come from here:
//   - a freed buffer goes to a cache and is handed out again to the next request it fits
//     (within kReuseSlack of its size), so a repeated step maps no new pages;
//   - a fresh one is mapped with transparent huge pages advised (Linux), 2 MiB at a time;
//   - the cache holds at most FASTAMORT_BUFFER_CACHE_MB MiB (default kDefaultCacheMb; 0
//     turns it off), least recently freed evicted first, and empty_cache() returns it all.
// Smaller buffers and other platforms' fallback use the ordinary allocator. Thread-safe.
#pragma once

#include <cstddef>
#include <new>
#include <utility>
#include <vector>

namespace fastamort::pool {

constexpr std::size_t kPooledMinBytes = std::size_t(1) << 20;
constexpr long kDefaultCacheMb = 256;

// At least `bytes` bytes, 64-byte aligned, contents unspecified. Throws std::bad_alloc.
void* allocate(std::size_t bytes);
// Gives back a buffer from allocate(bytes) (the same `bytes`).
void deallocate(void* p, std::size_t bytes) noexcept;
// Gives back a buffer from allocate(bytes) with bytes >= kPooledMinBytes (the pool knows its
// size): for owners that keep only the pointer, such as a NumPy array's base capsule.
void release(void* p) noexcept;

struct Stats {
  std::size_t cached_bytes;  // held by the cache, ready for reuse
  std::size_t live_bytes;    // pooled buffers in use
  std::size_t limit_bytes;   // the cache's cap
  long hits;                 // requests served from the cache
  long misses;               // requests that mapped a fresh buffer
};
Stats stats();
// Returns every cached buffer to the system.
void empty_cache();

// std::allocator replacement for std::vector: pooled storage, and elements of trivial types
// left uninitialised by resize() (every user writes before it reads).
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(pool::allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { pool::deallocate(p, n * sizeof(T)); }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) {
      ::new (static_cast<void*>(p)) U;  // default-initialised: no zeros for arithmetic types
    } else {
      ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
  }
  template <class U>
  bool operator==(const Allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const Allocator<U>&) const noexcept {
    return false;
  }
};

// A growable workspace array on the pool (contents uninitialised after growth).
template <class T>
using Vector = std::vector<T, Allocator<T>>;

}  // namespace fastamort::pool
