-- wrk script: POST one hook request body; prints the figures as one JSON line at the end.
-- usage: wrk -s bench/post.lua URL -- /path/to/request.json [PATIENT_ID]
-- With PATIENT_ID, every request is about another patient: each occurrence of the id in
-- the body (context, prefetch, references) becomes "<id>-<n>", so that the registry sees
-- distinct patients, as in production, not one patient evaluated thousands of times.
local body, patient, original
local n = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  original = args[2]
  if original then
    patient = original:gsub("%W", "%%%0")  -- the id as a literal Lua pattern
  end
  wrk.body = body
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if not patient then
    return wrk.format()
  end
  n = n + 1
  return wrk.format(nil, nil, nil, (body:gsub(patient, original .. "-" .. n)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
