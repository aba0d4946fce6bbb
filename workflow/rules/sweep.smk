# One job per sweep point. Points measure the machine, so two never run at once on a host:
# each holds the `point_slot` resource, of which the profiles allow one.


rule point:
    output:
        f"{RESULTS}/points/{{clients}}-{{messages}}-{{rep}}{{security}}/point.json",
    log:
        f"{RESULTS}/logs/points/{{clients}}-{{messages}}-{{rep}}{{security}}.log",
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        out=subpath(output[0], parent=True),
        options=run_options(),
        curve=lambda wildcards: "--curve" if wildcards.security else "",
    shell:
        "msgprof point --clients {wildcards.clients} --messages {wildcards.messages}"
        " {params.options} {params.curve} --out {params.out} > {log} 2>&1"
