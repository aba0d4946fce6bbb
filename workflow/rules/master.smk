# The seed's master test case: one long-lived server, steps ramped up and then down.


rule master:
    output:
        f"{RESULTS}/master/master.json",
    log:
        f"{RESULTS}/logs/master.log",
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        out=subpath(output[0], parent=True),
        steps=",".join(config["master"]["steps"]),
        options=run_options(),
    shell:
        "msgprof master --steps {params.steps} {params.options} --out {params.out} > {log} 2>&1"
