"""report.json rendered as Markdown, with the plots that the sections wrote beside it."""

from collections.abc import Sequence
from typing import Any


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.4f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def render(report: dict[str, Any]) -> str:
    s, ck = report["settings"], report["checkpoint"]
    ref = s["reference_samples"]
    out = [
        f"# Evaluation report: {ck['path']}",
        "",
        f"Checkpoint SHA-256 `{ck['sha256']}`, architecture {ck['config']}. "
        f"{s['examples']} test images; MC seeds from {s['seed']} (one request per block of "
        f"{s['block']} images, seed + block start); ECE over {s['ece_bins']} equal-width bins. "
        f"Error detection, shift and OOD use N = {ref} passes.",
        "",
        "## In distribution (test set)",
        "",
    ]
    ind = report["in_distribution"]
    rows = [
        ["eval (dropout off)", *(ind["eval"][m] for m in ("accuracy", "nll", "brier", "ece")), None]
    ]
    for n, q in ind["mc"].items():
        rows.append(
            [f"MC, N={n}", q["accuracy"], q["nll"], q["brier"], q["ece"], q["mean_agreement"]]
        )
    out += table(["mode", "accuracy", "NLL", "Brier", "ECE", "mean agreement"], rows)
    out += ["![reliability](reliability.png)", "", "![metrics vs N](metrics_vs_samples.png)", ""]

    temp = report.get("temperature")
    out += ["## Temperature scaling", ""]
    if temp is None:
        out += ["The checkpoint stores no calibration: no temperature to apply.", ""]
    else:
        out.append(
            f"Temperatures from the checkpoint (fitted on validation): eval "
            f"{temp['temperature_eval']:.4f}, MC {temp['temperature_mc']:.4f}; MC with N = {ref}."
        )
        out.append("")
        rows = [
            [
                f"{mode} {when}",
                *(temp[f"{mode}_{when}"][m] for m in ("accuracy", "nll", "brier", "ece")),
            ]
            for mode in ("eval", "mc")
            for when in ("before", "after")
        ]
        out += table(["mode", "accuracy", "NLL", "Brier", "ECE"], rows)
        out += ["![reliability after temperature](reliability_temperature.png)", ""]

    err = report["error_detection"]
    out += [
        "## Error detection",
        "",
        f"Detecting the {err['mc_errors']} wrong MC predictions (N = {ref}) by each score "
        f"(`eval_max_probability`: the {err['eval_errors']} wrong eval-mode predictions by "
        "the eval-mode max probability); AURC is the mean error rate over all coverages "
        "(lower is better).",
        "",
    ]
    out += table(
        ["score", "AUROC", "AURC"], [[k, v["auroc"], v["aurc"]] for k, v in err["scores"].items()]
    )
    out += ["![risk-coverage](risk_coverage.png)", ""]

    out += ["## Dataset shift", ""]
    for name, unit in (("rotation", "degrees"), ("noise", "Gaussian sigma, clipped to [0, 1]")):
        out += [f"### {name.capitalize()} ({unit})", ""]
        keys = [
            "eval_accuracy",
            "mc_accuracy",
            "eval_ece",
            "mc_ece",
            "eval_nll",
            "mc_nll",
            "mean_agreement",
        ]
        out += table(
            ["level", *keys], [[r["level"], *(r[k] for k in keys)] for r in report["shift"][name]]
        )
        out += [f"![{name}](shift_{name}.png)", ""]

    ood = report["ood"]
    out += [
        "## Out of distribution",
        "",
        f"In distribution: the {ood['in_distribution_examples']} test images. Positive: the "
        "OOD set. `eval_max_probability` is the dropout-off baseline.",
        "",
    ]
    for name, res in ood["sets"].items():
        out += [f"### {name} ({res['examples']} images)", ""]
        out += table(
            ["score", "AUROC", "FPR at 95% TPR"],
            [[k, v["auroc"], v["fpr_at_95_tpr"]] for k, v in res.items() if k != "examples"],
        )
    return "\n".join(out)
