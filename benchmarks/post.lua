-- wrk script: POST one file (BODY_FILE) with CONTENT_TYPE; print a JSON summary line at the end.
wrk.method = "POST"
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = file:read("*all")
file:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/octet-stream"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
