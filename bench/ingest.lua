-- wrk script for bench/ingest.py: posts signed Jira webhooks taken in turn from REQUESTS_FILE
-- (many connections of several companies, a distinct body per record), each with its own
-- X-Atlassian-Webhook-Identifier, so every request is a new event, not a duplicate.
-- REQUESTS_FILE holds records of "<path>\t<X-Hub-Signature>\t<body length>\n<body>".
local records = {}
do
  local file = assert(io.open(os.getenv("REQUESTS_FILE"), "rb"))
  while true do
    local line = file:read("*l")
    if not line then break end
    local path, signature, length = line:match("^([^\t]+)\t([^\t]+)\t(%d+)$")
    local body = file:read(tonumber(length))
    records[#records + 1] = { path = path, signature = signature, body = body }
  end
  file:close()
end
local run_id = os.getenv("RUN_ID") or tostring(os.time())
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("prefix", string.format("%s-%d", run_id, thread_count))
  -- Threads start at different records.
  thread:set("offset", thread_count * 7919)
end

local counter = 0
function request()
  counter = counter + 1
  local record = records[(offset + counter) % #records + 1]
  return wrk.format("POST", record.path, {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["X-Hub-Signature"] = record.signature,
    ["X-Atlassian-Webhook-Identifier"] = prefix .. "-" .. counter,
  }, record.body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
