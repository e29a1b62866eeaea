-- wrk script for scopegate/bench/run.sh.
-- Method and headers come from the environment (so credentials never appear on
-- the command line), and done() prints one machine-readable line:
--   WRKJSON {...}
-- Env:
--   WRK_METHOD  HTTP method (default GET)
--   WRK_ACCEPT  Accept header value (optional)
--   WRK_AUTH    Authorization header value (optional)
-- No response() callback on purpose: it makes wrk parse every header into Lua
-- and costs client CPU on a 2-core box. Non-2xx/3xx responses are still
-- counted by wrk itself (summary.errors.status).
local method = os.getenv("WRK_METHOD") or "GET"
local accept = os.getenv("WRK_ACCEPT")
local auth = os.getenv("WRK_AUTH")

wrk.method = method
if accept and accept ~= "" then wrk.headers["Accept"] = accept end
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.6f,"bytes":%d,"rps":%.2f,' ..
    '"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,"mean_ms":%.4f,"max_ms":%.4f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"non_2xx_3xx":%d}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, e.status))
end
