-- wrk helper for bench/proxy.sh.
--
-- Prints one machine-readable line when the run ends (requests/s, p50 and p99 in
-- microseconds, non-2xx/3xx responses, socket errors), so the script never parses wrk's
-- human output.
--
-- With WRK_RATE (total requests/s) and WRK_THREADS set, it paces the load: each wrk thread
-- hands out send slots at WRK_RATE / WRK_THREADS per second on a fixed schedule, and a
-- connection that finished its previous request waits for the next free slot. That is a
-- constant request rate with stock wrk (wrk2 is not packaged for Debian), as long as some
-- connection is idle when a slot comes up: with 64 connections at half the maximum rate
-- there always is. Constant on average, not evenly spaced: wrk's timers count whole
-- milliseconds, so a connection whose slot is less than one away sends at once, and each
-- millisecond's requests leave together (at 30k req/s, captured at the upstream: a median
-- gap of 7 µs between arrivals against a mean of 33, 62% of 100 µs windows with none).
-- examples/bench_load.rs sends them evenly spaced (bench/proxy.sh with PACER=even). wrk starts a request's latency clock when it writes the request, after
-- the wait, so latency is service time. If every connection were busy, requests would queue
-- unseen (coordinated omission); the achieved rate, printed beside the target, shows it.

local rate = tonumber(os.getenv("WRK_RATE") or "")
local threads = tonumber(os.getenv("WRK_THREADS") or "1")

if rate and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
    int clock_gettime(int clk_id, wrk_timespec *tp);
  ]]
  local ts = ffi.new("wrk_timespec")
  local CLOCK_MONOTONIC = 1
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end

  local interval_ms = threads * 1000 / rate
  local next_slot = nil

  -- Called before each request: milliseconds to wait. wrk's timers count whole
  -- milliseconds, so the wait is rounded down; the schedule itself stays exact.
  function delay()
    local now = now_ms()
    if next_slot == nil or next_slot < now - 10 then
      -- Start, or fell behind by more than 10 ms: do not burst to catch up.
      next_slot = now
    end
    local slot = next_slot
    next_slot = next_slot + interval_ms
    local wait = slot - now
    if wait < 1 then
      return 0
    end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d non2xx=%d socket_errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50),
    latency:percentile(99),
    summary.requests,
    e.status,
    e.connect + e.read + e.write + e.timeout))
end
