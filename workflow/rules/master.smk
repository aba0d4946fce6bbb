# The seed's master test case: one long-lived server, steps ramped up and then down.


rule master:
    input:
        conformance_check(),
    output:
        f"{RESULTS}/master/master.json",
    log:
        f"{RESULTS}/logs/master.log",
    benchmark:
        f"{RESULTS}/benchmarks/master.tsv"
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        command=master_command,
    shell:
        "{params.command} > {log} 2>&1"
