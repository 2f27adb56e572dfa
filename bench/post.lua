-- wrk script of the insert benchmark (bench/run): every request is a
-- POST /calls to a random Saudi mobile number (+96650 and seven random
-- digits), with a small metadata object, as a client would send it. At the
-- end it prints one JSON line with exact counts and latency percentiles
-- (microseconds), which the harness reads instead of wrk's rounded text.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  -- Each thread its own sequence: the same seed would repeat numbers.
  math.randomseed(os.time() * 1000 + seed)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = string.format(
    '{"to":"+96650%07d","scriptId":"welcomeFlow","metadata":{"customer":%d,"campaign":"bench"}}',
    math.random(0, 9999999),
    math.random(1, 1000000)
  )
  return wrk.format(nil, "/calls", nil, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max
  ))
end
