"""The stats figure: one PNG of histograms drawn from the stats.json object alone (so it can be redrawn)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UsageError

MAX_GROUP_BARS = 30  # more backgrounds/foregrounds than this: the largest, and one bar for the rest


def pyplot(what: str):
    """matplotlib.pyplot on the Agg backend; UsageError (exit 2) naming `what` needs it if it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"{what} needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars_from_edges(ax, edges: list[float], counts: list[int], color: str) -> None:
    e = np.asarray(edges, np.float64)  # [K+1]
    ax.bar(e[:-1], counts, width=np.diff(e), align="edge", color=color, edgecolor="white", linewidth=0.3)


def draw_rgb(ax, img: dict) -> None:
    x = np.arange(256) / 255.0
    for c, (name, color) in enumerate(zip("RGB", ("tab:red", "tab:green", "tab:blue"))):
        counts = np.asarray(img["histogram"][c], np.float64)
        ax.plot(x, counts / max(counts.sum(), 1), color=color, lw=1.2,
                label=f"{name}  {img['mean'][c]:.4f} ± {img['std'][c]:.4f}")
    ax.set_title("composite pixel values (mean ± std)")
    ax.set_xlabel("value / 255")
    ax.set_ylabel("fraction of pixels")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)


def draw_mask(ax, mask: dict) -> None:
    h = mask["histogram"]
    _bars_from_edges(ax, h["edges"], h["counts"], "tab:cyan")
    ax.axvline(mask["pixel_fraction"], color="k", lw=1, ls="--")
    ax.set_title(f"mask foreground fraction per sample\n(all pixels: {100 * mask['pixel_fraction']:.2f} %)")
    ax.set_xlabel("foreground fraction")
    ax.set_ylabel("samples")
    ax.set_xlim(0, 1)


def draw_depth(ax, depth: dict) -> None:
    if "histogram" not in depth:
        _no_data(ax, "no depth in this dataset" if not depth.get("present") else depth.get("note", "no depth"))
        ax.set_title("depth")
        return
    h = depth["histogram"]
    _bars_from_edges(ax, h["edges"], h["counts"], "tab:purple")
    ax.axvline(depth["mean"], color="k", lw=1, ls="--")
    ax.set_title(f"depth (valid pixels): {depth['mean']:.3f} ± {depth['std']:.3f} m\n"
                 f"{100 * depth['no_data_fraction']:.1f} % of pixels have no data")
    ax.set_xlabel("depth (m)")
    ax.set_ylabel("pixels")


def draw_scale(ax, scale: dict) -> None:
    h = scale["histogram"]
    _bars_from_edges(ax, h["edges"], h["counts"], "tab:orange")
    ax.set_title(f"scale (box area / image area)\n{scale.get('mean', 0):.3f} ± {scale.get('std', 0):.3f}")
    ax.set_xlabel("scale")
    ax.set_ylabel("samples")


def draw_center(fig, ax, center: dict) -> None:
    counts = np.asarray(center["histogram"]["counts"])  # [bins (y), bins (x)]
    im = ax.imshow(counts, origin="upper", extent=(0, 1, 1, 0), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="samples")
    ax.set_title("foreground box centre")
    ax.set_xlabel("x / compose size")
    ax.set_ylabel("y / compose size")


def draw_groups(ax, groups: list[dict], title: str, color: str) -> None:
    if not groups:
        _no_data(ax, "no samples")
        ax.set_title(title)
        return
    groups = sorted(groups, key=lambda g: (-g["count"], g["id"]))
    shown = groups[:MAX_GROUP_BARS]
    labels = [Path(g["file"]).name[:28] for g in shown]
    counts = [g["count"] for g in shown]
    if len(groups) > MAX_GROUP_BARS:
        labels.append(f"{len(groups) - MAX_GROUP_BARS} others")
        counts.append(sum(g["count"] for g in groups[MAX_GROUP_BARS:]))
    y = np.arange(len(counts))
    ax.barh(y, counts, color=color)
    ax.set_yticks(y, labels, fontsize=7 if len(counts) > 12 else 8)
    ax.invert_yaxis()
    ax.set_title(f"{title} ({len(groups)})")
    ax.set_xlabel("samples")


def draw_summary(ax, stats: dict) -> None:
    from .stats import unit_word
    size, img, place = stats["size"], stats["image"], stats["placement"]
    lines = [f"{size['samples']} samples, {size['image_size'][0]}x{size['image_size'][1]}",
             f"{size['units']} {unit_word(size)}, {size['bytes'] / 1e6:.1f} MB",
             "", "normalization (values / 255):",
             "mean " + ", ".join(f"{m:.4f}" for m in img["mean"]),
             "std  " + ", ".join(f"{s:.4f}" for s in img["std"]),
             "", f"flipped: {100 * place['flip']['fraction']:.1f} %",
             f"backgrounds: {len(place['backgrounds'])}", f"foregrounds: {len(place['foregrounds'])}"]
    if not size.get("complete", True):
        lines.append("INCOMPLETE RUN")
    ax.text(0.02, 0.98, "\n".join(lines), ha="left", va="top", transform=ax.transAxes, family="monospace",
            fontsize=9)
    ax.axis("off")


def draw(stats: dict, path: Path) -> None:
    """Draw the 2x4 figure of `stats` (a stats.json object) into the PNG at `path`."""
    plt = pyplot("the stats figure (or use --no-figure)")
    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5), dpi=100)
    (a_rgb, a_mask, a_depth, a_text), (a_scale, a_center, a_bg, a_fg) = axes
    draw_rgb(a_rgb, stats["image"])
    draw_mask(a_mask, stats["mask"])
    draw_depth(a_depth, stats["depth"])
    draw_summary(a_text, stats)
    draw_scale(a_scale, stats["placement"]["scale"])
    draw_center(fig, a_center, stats["placement"]["center"])
    draw_groups(a_bg, stats["placement"]["backgrounds"], "samples per background", "tab:green")
    draw_groups(a_fg, stats["placement"]["foregrounds"], "samples per foreground", "tab:blue")
    fig.suptitle(f"smalldepthmask stats: {stats['dataset']}", fontsize=12)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write ({' '.join(str(e).split())})") from None
    finally:
        plt.close(fig)
