// The engines' buffer pool (buffer_pool.hpp): a cache of freed large buffers over mmap with
// transparent huge pages advised.
#include "buffer_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#define FASTAMORT_HAVE_MMAP 1
#endif

namespace fastamort::pool {
namespace {

// A cached buffer serves requests down to 1/kReuseSlack of its size: a 16 MiB factor copy can
// take a freed 20 MiB Gram buffer, a 1 MiB panel cannot hold a 64 MiB one.
constexpr std::size_t kReuseSlack = 2;
// Fresh buffers are whole huge pages, so that a slightly larger request next step still fits.
constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr std::size_t kAlign = 64;

std::size_t limit_from_env() {
  const char* env = std::getenv("FASTAMORT_BUFFER_CACHE_MB");
  long mb = kDefaultCacheMb;
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && v >= 0) mb = v;
  }
  return static_cast<std::size_t>(mb) << 20;
}

void* map_fresh(std::size_t capacity) {
#ifdef FASTAMORT_HAVE_MMAP
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(p, capacity, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
#endif
  return p;
#else
  return ::operator new(capacity, std::align_val_t(kAlign));
#endif
}

void unmap(void* p, std::size_t capacity) noexcept {
#ifdef FASTAMORT_HAVE_MMAP
  munmap(p, capacity);
#else
  ::operator delete(p, std::align_val_t(kAlign));
  (void)capacity;
#endif
}

class Pool {
 public:
  void* allocate(std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second >= bytes && it->second <= bytes * kReuseSlack &&
            (best == free_.end() || it->second < best->second))
          best = it;
      }
      if (best != free_.end()) {
        void* p = best->first;
        live_[p] = best->second;
        live_bytes_ += best->second;
        cached_bytes_ -= best->second;
        free_.erase(best);
        ++hits_;
        return p;
      }
      ++misses_;
    }
    const std::size_t capacity = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = map_fresh(capacity);
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = capacity;
    live_bytes_ += capacity;
    return p;
  }

  void deallocate(void* p) noexcept {
    std::list<std::pair<void*, std::size_t>> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it == live_.end()) return;  // not ours: cannot happen through allocate()
      const std::size_t capacity = it->second;
      live_.erase(it);
      live_bytes_ -= capacity;
      free_.emplace_back(p, capacity);  // most recently freed last
      cached_bytes_ += capacity;
      while (cached_bytes_ > limit_ && !free_.empty()) {
        cached_bytes_ -= free_.front().second;
        evicted.splice(evicted.end(), free_, free_.begin());
      }
    }
    for (const auto& [q, capacity] : evicted) unmap(q, capacity);  // outside the lock
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, live_bytes_, limit_, hits_, misses_};
  }

  void empty() {
    std::list<std::pair<void*, std::size_t>> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evicted.swap(free_);
      cached_bytes_ = 0;
    }
    for (const auto& [q, capacity] : evicted) unmap(q, capacity);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<void*, std::size_t> live_;  // pointer -> capacity
  std::list<std::pair<void*, std::size_t>> free_;
  std::size_t cached_bytes_ = 0, live_bytes_ = 0;
  const std::size_t limit_ = limit_from_env();
  long hits_ = 0, misses_ = 0;
};

// Never destroyed: buffers may be freed by Python objects torn down after static destructors.
Pool& the_pool() {
  static Pool* pool = new Pool();
  return *pool;
}

}  // namespace

void* allocate(std::size_t bytes) {
  if (bytes < kPooledMinBytes)
    return ::operator new(std::max<std::size_t>(bytes, 1), std::align_val_t(kAlign));
  return the_pool().allocate(bytes);
}

void deallocate(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return;
  if (bytes < kPooledMinBytes) {
    ::operator delete(p, std::align_val_t(kAlign));
    return;
  }
  the_pool().deallocate(p);
}

void release(void* p) noexcept {
  if (p != nullptr) the_pool().deallocate(p);
}

Stats stats() { return the_pool().stats(); }

void empty_cache() { the_pool().empty(); }

}  // namespace fastamort::pool
