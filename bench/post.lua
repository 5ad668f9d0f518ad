-- wrk script for bench/run.py: every request POSTs the JSON body read from the file named after
-- `--`, and done() prints the run's figures as one "BENCH_JSON {...}" line for run.py to read.
-- If $TOKENTOLL_BENCH_KEY is set, each request also carries `Authorization: Bearer <that key>` (the
-- key travels in the environment, not on the command line that run.py saves beside wrk's output).

function init(args)
    local f = assert(io.open(args[1], "rb"))
    wrk.method = "POST"
    wrk.body = f:read("*a")
    f:close()
    wrk.headers["Content-Type"] = "application/json"
    local key = os.getenv("TOKENTOLL_BENCH_KEY")
    if key and key ~= "" then
        wrk.headers["Authorization"] = "Bearer " .. key
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx_3xx":%d,' ..
        '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p90_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.timeout, e.status,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
