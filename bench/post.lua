-- wrk script for bench/http_bench.py: POSTs JSON bodies, one per line of the file named after
-- `--`, in turn; done() prints the results as one JSON line (times in microseconds).
-- Run: wrk -t1 -c8 -d10s -s bench/post.lua http://127.0.0.1:8000/v1/models/bench/predict -- FILE

local bodies = {}
local next_body = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  if #bodies == 0 then
    error("no bodies in " .. args[1])
  end
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, '
      .. '"read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout
  ))
end
