#!/usr/bin/env python3
"""Draws bus bandwidth against message size for par and MPI as a hand-written SVG.

Input: the sweep.json that `bench/compare.py --sweep` writes (parbench and mpibench rows, each
tagged with "impl" and its sweep "size", plus the measured memory bandwidth). One panel per op
(allreduce, allgather, broadcast), log-log axes, par in blue and MPI in orange, solid lines for
2 ranks and dashed for 8 (other rank counts get other dash patterns). The all-reduce panel also
shows the memory-bandwidth ceiling as busbw: t >= 2*S*n/BW gives
busbw = S/t * 2(n-1)/n <= BW*(n-1)/n^2, drawn from the size at which 2*S*n outgrows the
last-level cache ("llc_bytes" in the sweep), since cache-resident data moves faster.

    python3 bench/plot.py build/bench-compare/sweep.json -o docs/perf.svg

Only the standard library is used (matplotlib is not assumed to be installed).
"""
import argparse
import json
import math
import sys
from xml.sax.saxutils import escape

OPS = ("allreduce", "allgather", "broadcast")
COLORS = {"par": "#1f6fb4", "mpi": "#e8730c"}
DASHES = ["", "7,4", "2,3", "9,3,2,3"]
PANEL_W, PANEL_H = 330, 270
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 14, 34, 46
LEGEND_H = 44


def size_label(b):
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= div and b % div == 0:
            return "%d%s" % (b // div, unit)
    return str(b)


def bw_label(v):
    return ("%g" % v) if v >= 0.001 else "%.0e" % v


class Axes:
    """Maps log10(size) and log10(busbw) into one panel's pixel box."""

    def __init__(self, x0, y0, xmin, xmax, ymin, ymax):
        self.x0, self.y0 = x0, y0
        self.lx = (math.log10(xmin), math.log10(xmax))
        self.ly = (math.log10(ymin), math.log10(ymax))
        self.w = PANEL_W - MARGIN_L - MARGIN_R
        self.h = PANEL_H - MARGIN_T - MARGIN_B

    def px(self, x):
        f = (math.log10(x) - self.lx[0]) / (self.lx[1] - self.lx[0])
        return self.x0 + MARGIN_L + f * self.w

    def py(self, y):
        f = (math.log10(y) - self.ly[0]) / (self.ly[1] - self.ly[0])
        return self.y0 + MARGIN_T + (1 - f) * self.h


def render(sweep):
    rows = [r for r in sweep["rows"] if r["busbw_gbs"] > 0 and r["bytes"] > 0]
    if not rows:
        raise ValueError("the sweep has no row with a positive busbw")
    ranks = sorted({r["ranks"] for r in rows})
    impls = [i for i in ("par", "mpi") if any(r["impl"] == i for r in rows)]
    bw = sweep.get("bandwidth_gbs")
    llc = sweep.get("llc_bytes")
    xmin = min(r["size"] for r in rows)
    xmax = max(r["size"] for r in rows)
    ys = [r["busbw_gbs"] for r in rows]
    if bw:
        ys += [bw * (n - 1) / n ** 2 for n in ranks]
    ymin = 10 ** math.floor(math.log10(min(ys)))
    ymax = 10 ** math.ceil(math.log10(max(ys)))
    if ymax <= ymin:
        ymax = ymin * 10

    width = PANEL_W * len(OPS)
    height = PANEL_H + LEGEND_H
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">' %
           (width, height, width, height),
           '<rect width="100%" height="100%" fill="white"/>']
    for pi, op in enumerate(OPS):
        ax = Axes(pi * PANEL_W, 0, xmin, xmax, ymin, ymax)
        left, right = ax.x0 + MARGIN_L, ax.x0 + MARGIN_L + ax.w
        top, bottom = MARGIN_T, MARGIN_T + ax.h
        out.append('<text x="%.1f" y="18" text-anchor="middle" font-size="13" '
                   'font-weight="bold">%s</text>' % ((left + right) / 2, op))
        # Grid and ticks: x every factor 16 from the smallest size, y every decade.
        x = xmin
        while x <= xmax:
            gx = ax.px(x)
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' %
                       (gx, top, gx, bottom))
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' %
                       (gx, bottom + 14, size_label(x)))
            x *= 16
        e = int(round(math.log10(ymin)))
        while 10 ** e <= ymax * 1.0001:
            gy = ax.py(10 ** e)
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' %
                       (left, gy, right, gy))
            out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' %
                       (left - 4, gy + 4, bw_label(10 ** e)))
            e += 1
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' %
                   (left, top, ax.w, ax.h))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">size (bytes)</text>' %
                   ((left + right) / 2, bottom + 32))
        out.append('<text transform="translate(%d,%.1f) rotate(-90)" text-anchor="middle">'
                   'busbw (GB/s)</text>' % (ax.x0 + 14, (top + bottom) / 2))
        if op == "allreduce" and bw:
            for k, n in enumerate(ranks):
                # Drawn only where 2*S*n exceeds the last-level cache: below, the data can stay
                # in the cache, whose bandwidth is higher than memory's, and the bound is void.
                start = max(xmin, llc / (2.0 * n)) if llc else xmin
                if start >= xmax:
                    continue
                gx, gy = ax.px(start), ax.py(bw * (n - 1) / n ** 2)
                out.append('<line x1="%.1f" y1="%.1f" x2="%d" y2="%.1f" stroke="#555" '
                           'stroke-dasharray="%s" stroke-width="1.2"/>' %
                           (gx, gy, right, gy, DASHES[k % len(DASHES)] or "1,0"))
                # Labels at the right end, alternately above and below their line.
                out.append('<text x="%d" y="%.1f" fill="#555" font-size="10" '
                           'text-anchor="end">bound, %d ranks</text>' %
                           (right - 3, gy - 4 if k % 2 == 0 else gy + 11, n))
        for k, n in enumerate(ranks):
            for impl in impls:
                pts = sorted((r["size"], r["busbw_gbs"]) for r in rows
                             if r["op"] == op and r["ranks"] == n and r["impl"] == impl)
                if not pts:
                    continue
                coords = " ".join("%.1f,%.1f" % (ax.px(s), ax.py(b)) for s, b in pts)
                dash = DASHES[k % len(DASHES)]
                out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>' %
                           (coords, COLORS[impl],
                            ' stroke-dasharray="%s"' % dash if dash else ""))
                for s, b in pts:
                    out.append('<circle cx="%.1f" cy="%.1f" r="2.2" fill="%s"/>' %
                               (ax.px(s), ax.py(b), COLORS[impl]))
    # Legend: one entry per (impl, ranks).
    ly = PANEL_H + 14
    lx = MARGIN_L
    mpi_name = (sweep.get("mpi_version") or "MPI").replace("mpirun (", "").replace(")", "")
    for k, n in enumerate(ranks):
        for impl in impls:
            dash = DASHES[k % len(DASHES)]
            out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' %
                       (lx, ly, lx + 26, ly, COLORS[impl],
                        ' stroke-dasharray="%s"' % dash if dash else ""))
            name = "par (shm)" if impl == "par" else mpi_name
            out.append('<text x="%d" y="%d">%s, %d ranks</text>' %
                       (lx + 32, ly + 4, escape(name), n))
            lx += 220
    note = "f32; allreduce with sum; nccl-tests busbw factors"
    if bw:
        note += "; bound from %.1f GB/s copy bandwidth" % bw
    if sweep.get("load1") is not None:
        note += "; 1-min load average %.1f" % sweep["load1"]
    out.append('<text x="%d" y="%d" fill="#555" font-size="10">%s</text>' %
               (MARGIN_L, ly + 24, escape(note)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    p = argparse.ArgumentParser(description="busbw vs size SVG from compare.py --sweep")
    p.add_argument("sweep", help="sweep.json written by bench/compare.py --sweep")
    p.add_argument("-o", "--output", default="-", help="SVG file (default: stdout)")
    args = p.parse_args(argv)
    with open(args.sweep) as f:
        svg = render(json.load(f))
    if args.output == "-":
        sys.stdout.write(svg)
    else:
        with open(args.output, "w") as f:
            f.write(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
