// A background thread that wakes on a timer or when poked, and stops cleanly: the shape of
// dsv3d's allocator watchers, the local rank supervisor and a rank's controller reporter.
//
// The owner's mutex guards both the owner's state and the stop flag, so a waiter can never
// miss a stop or a Wake() (CONVENTIONS: every write a waiter waits on notifies).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace dsv3 {

class BackgroundLoop {
 public:
  using Lock = std::unique_lock<std::mutex>;

  // `mu` is the owner's mutex; it must outlive this object.
  explicit BackgroundLoop(std::mutex& mu) : mu_(mu) {}
  // Stops and joins (the owner's members the body reads must still be alive: declare the
  // loop after them, or call Stop() first in the owner's destructor).
  ~BackgroundLoop() { Stop(); }
  BackgroundLoop(const BackgroundLoop&) = delete;
  BackgroundLoop& operator=(const BackgroundLoop&) = delete;

  // Starts the thread, once. `body` runs with `mu` held (it may unlock around slow work) and
  // returns when it sees Stopping(); the Wait calls below return false from then on.
  void Start(std::function<void(Lock&)> body) {
    thread_ = std::thread([this, body = std::move(body)] {
      Lock lock(mu_);
      body(lock);
    });
  }

  // Sets the stop flag under the mutex, wakes every waiter and joins. Idempotent; call it
  // without holding the mutex, and never from the body.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Wakes the body and every other waiter; the caller may hold the mutex or not.
  void Wake() { cv_.notify_all(); }

  // With the mutex held: whether Stop() was called.
  bool Stopping() const { return stop_; }

  // With the mutex held (through `lock`): sleeps until `deadline`, a Wake(), a stop or, for
  // the second form, `ready()` turns true. Returns false once stopping. Any thread of the
  // owner may wait this way (e.g. "until the queue is empty"), not only the body.
  template <class Clock, class Duration>
  bool WaitUntil(Lock& lock, std::chrono::time_point<Clock, Duration> deadline) {
    if (!stop_) cv_.wait_until(lock, deadline);
    return !stop_;
  }
  template <class Clock, class Duration, class Ready>
  bool WaitUntil(Lock& lock, std::chrono::time_point<Clock, Duration> deadline, Ready ready) {
    cv_.wait_until(lock, deadline, [&] { return stop_ || ready(); });
    return !stop_;
  }
  template <class Rep, class Period>
  bool WaitFor(Lock& lock, std::chrono::duration<Rep, Period> timeout) {
    return WaitUntil(lock, std::chrono::steady_clock::now() + timeout);
  }

 private:
  std::mutex& mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace dsv3
