-- wrk script: POST one signed Jira fixture with a unique X-Atlassian-Webhook-Identifier per
-- request (so every request is a new event, not a duplicate). BODY_FILE and SIGNATURE come
-- from bench/ingest.sh.
local body = assert(io.open(os.getenv("BODY_FILE"), "rb")):read("*a")
local signature = os.getenv("SIGNATURE")
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("prefix", string.format("bench-%d-%d", os.time(), thread_count))
end

local counter = 0
function request()
  counter = counter + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["X-Hub-Signature"] = signature,
    ["X-Atlassian-Webhook-Identifier"] = prefix .. "-" .. counter,
  }, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT requests=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
