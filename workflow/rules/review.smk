# Reviewing the run (docs/review.md): the config's service-level gates (slo.csv, then a job
# that fails when one failed) and the comparison with another run (compare_to).
SLO = config["slo"]
GATE_ARGS = shlex.join(
    [arg for gate in SLO["gates"] for arg in ("--slo", gate)]
    + [arg for where in SLO["where"] for arg in ("--where", where)]
)
COMPARE_TO = config["compare_to"]


if COMPARE_TO is not None:
    COMPARE_RUN = compare_run(COMPARE_TO)
    COMPARE_DIR = f"{RESULTS}/compare-to-{COMPARE_RUN.resolve().name}"


if SLO["gates"]:

    rule slo:
        input:
            rules.analysis.output.points,
        output:
            report(
                f"{RESULTS}/slo.csv",
                caption="../report/slo.rst",
                category="Tables",
            ),
        log:
            f"{RESULTS}/logs/slo.log",
        benchmark:
            f"{RESULTS}/benchmarks/slo.tsv"
        conda:
            "../envs/msgprof.yaml"
        params:
            run_dir=subpath(input[0], parent=True),
            gates=GATE_ARGS,
        shell:
            "msgprof check {params.run_dir} {params.gates} --report-only --out {output} > {log} 2>&1"

    rule slo_gate:
        input:
            rules.slo.output,
            rules.profiling_pdf.output.pdf,
        output:
            touch(f"{RESULTS}/logs/slo.passed"),
        log:
            f"{RESULTS}/logs/slo_gate.log",
        benchmark:
            f"{RESULTS}/benchmarks/slo_gate.tsv"
        conda:
            "../envs/msgprof.yaml"
        params:
            run_dir=subpath(input[0], parent=True),
            gates=GATE_ARGS,
            table=lambda wildcards, output: Path(output[0]).with_name("slo_gate.csv"),
        shell:
            "msgprof check {params.run_dir} {params.gates} --out {params.table} "
            "> {log} 2>&1 || (cat {log} >&2; exit 1)"


if COMPARE_TO is not None:

    rule compare:
        input:
            rules.analysis.output.points,
            rules.manifest.output.manifest,
        output:
            csv=report(
                f"{COMPARE_DIR}/compare.csv",
                caption="../report/compare.rst",
                category="Review",
            ),
            pdf=report(
                f"{COMPARE_DIR}/compare.pdf",
                caption="../report/compare_pdf.rst",
                category="Review",
            ),
            json=f"{COMPARE_DIR}/compare.json",
        log:
            f"{RESULTS}/logs/compare.log",
        benchmark:
            f"{RESULTS}/benchmarks/compare.tsv"
        conda:
            "../envs/msgprof.yaml"
        params:
            other=COMPARE_RUN,
            run_dir=subpath(input[0], parent=True),
            out=subpath(output.csv, parent=True),
        shell:
            "msgprof compare {params.other} {params.run_dir} --out {params.out} > {log} 2>&1"
