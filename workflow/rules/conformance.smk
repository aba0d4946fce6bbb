# A server command is checked against protocol v1's rules before any point runs against it
# (msgprof conform): server.conformance required refuses a server that fails (this job fails,
# so no point runs; the table is in the log and on stderr), warn records the table and goes on.
if conformance_check():

    rule conformance:
        output:
            f"{RESULTS}/conformance.txt",
        log:
            f"{RESULTS}/logs/conformance.log",
        benchmark:
            f"{RESULTS}/benchmarks/conformance.tsv"
        conda:
            "../envs/msgprof.yaml"
        params:
            server=lambda wildcards: shlex.quote(SERVER["server_command"]),
            max_payload=SERVER["max_payload_bytes"],
            on_failure="exit 1" if CONFORMANCE == "required" else "true",
        shell:
            "msgprof conform {params.server} --max-payload-bytes {params.max_payload} "
            "> {output} 2> {log} || (cat {output} >&2; {params.on_failure})"
