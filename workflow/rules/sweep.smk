# One job per sweep point. Points measure the machine, so two never run at once on a host:
# each holds the `point_slot` resource, of which the profiles allow one.


rule point:
    input:
        conformance_check(),
    output:
        f"{RESULTS}/points/{{clients}}-{{messages}}-{{rep}}{{security}}/point.json",
    log:
        f"{RESULTS}/logs/points/{{clients}}-{{messages}}-{{rep}}{{security}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/points/{{clients}}-{{messages}}-{{rep}}{{security}}.tsv"
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        command=point_command,
    shell:
        "{params.command} > {log} 2>&1"


# A paced point (open loop): its name carries the rate, and the length in messages or seconds.
rule paced_point:
    input:
        conformance_check(),
    output:
        f"{RESULTS}/points/{{clients}}-{{length}}-r{{rate}}-{{rep}}{{security}}/point.json",
    log:
        f"{RESULTS}/logs/points/{{clients}}-{{length}}-r{{rate}}-{{rep}}{{security}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/points/{{clients}}-{{length}}-r{{rate}}-{{rep}}{{security}}.tsv"
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        command=paced_point_command,
    shell:
        "{params.command} > {log} 2>&1"
