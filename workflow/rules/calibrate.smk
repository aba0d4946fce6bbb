# The load generator's own floor on this host, measured before the points (priority) so the
# report can say which RTTs are the generator's cost. Not an input of any point: recalibrating
# never reruns one. It holds the point slot, so it never runs beside a point.


rule calibrate:
    output:
        f"{RESULTS}/calibration.json",
    log:
        f"{RESULTS}/logs/calibrate.log",
    benchmark:
        f"{RESULTS}/benchmarks/calibrate.tsv"
    priority: 100
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        run_dir=subpath(output[0], parent=True),
    shell:
        "msgprof calibrate --out {params.run_dir} > {log} 2>&1"
