# Aggregation: tables, the profiling PDF and the run's manifest.


rule analysis:
    input:
        measured_outputs(),
        rules.calibrate.output,
    output:
        analysis=report(
            f"{RESULTS}/analysis.csv",
            caption="../report/analysis.rst",
            category="Tables",
        ),
        points=report(
            f"{RESULTS}/points.csv",
            caption="../report/points.rst",
            category="Tables",
        ),
        resources=report(
            f"{RESULTS}/resources.csv",
            caption="../report/resources.rst",
            category="Tables",
        ),
        limits=report(
            f"{RESULTS}/limits.csv",
            caption="../report/limits.rst",
            category="Tables",
        ),
        latency=report(
            f"{RESULTS}/latency.csv",
            caption="../report/latency.rst",
            category="Tables",
        ),
        profile=report(
            f"{RESULTS}/profile.csv",
            caption="../report/profile.rst",
            category="Tables",
        ),
        flame=report(
            f"{RESULTS}/flame.csv",
            caption="../report/flame.rst",
            category="Tables",
        ),
    log:
        f"{RESULTS}/logs/analysis.log",
    benchmark:
        f"{RESULTS}/benchmarks/analysis.tsv"
    conda:
        "../envs/msgprof.yaml"
    params:
        run_dir=subpath(output.analysis, parent=True),
    shell:
        "msgprof analyze {params.run_dir} > {log} 2>&1"


rule manifest:
    input:
        measured_outputs(),
    output:
        manifest=report(
            f"{RESULTS}/manifest.json",
            caption="../report/manifest.rst",
            category="Provenance",
        ),
        config=report(
            f"{RESULTS}/config.yaml",
            caption="../report/config.rst",
            category="Provenance",
        ),
    log:
        f"{RESULTS}/logs/manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/manifest.tsv"
    conda:
        "../envs/msgprof.yaml"
    script:
        "../scripts/manifest.py"


rule profiling_pdf:
    input:
        rules.analysis.output,
        rules.calibrate.output,
        rules.manifest.output.manifest,
        slo_table(),
    output:
        pdf=report(
            f"{RESULTS}/msg_proc_profiling.pdf",
            caption="../report/profiling_pdf.rst",
            category="Profiling",
        ),
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{category}/{page}.png"],
            caption="../report/figure.rst",
            category="{category}",
            labels={"page": "{page}"},
        ),
    log:
        f"{RESULTS}/logs/profiling_pdf.log",
    benchmark:
        f"{RESULTS}/benchmarks/profiling_pdf.tsv"
    conda:
        "../envs/msgprof.yaml"
    params:
        run_dir=subpath(output.pdf, parent=True),
    shell:
        "msgprof report {params.run_dir} > {log} 2>&1"
