import Foundation
import SDDiTCore

/// `oracle regress report`: one self-contained HTML page (inline CSS and SVG, no scripts,
/// no fonts, nothing fetched): the latest run and its check against the one before, per-group
/// error summaries and timings over the recorded history, the tensors closest to their
/// tolerance with their history, and the latest run's per-layer error profile.
public enum RegressReport {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
    /// Zero errors (bit-identical) cannot sit on a log axis: drawn at this value and said so.
    static let logZero = 1e-18
    static let groupOrder = ["params", "activations", "losses", "grads", "after_step/params", "after_step/teacher", "after_step/centers", "sampler"]

    public struct Series {
        public var name: String
        public var points: [(Double, Double)]
        public init(_ name: String, _ points: [(Double, Double)]) { self.name = name; self.points = points }
    }

    // MARK: grouping

    /// "error/tiny/fast-fp16/activations/student.c" -> (config "tiny", mode "fast-fp16", group "activations")
    static func errorParts(_ name: String) -> (config: String, mode: String, group: String, tensor: String)? {
        let p = name.split(separator: "/", maxSplits: 4).map(String.init)
        guard p.count >= 4, p[0] == "error" else { return nil }
        if p[1] == "fixture" {
            // error/fixture/<file>/<backend>/<dataset>
            guard p.count == 5 else { return nil }
            return ("fixture", p[3], p[2], p[4])
        }
        let rest = p.count == 5 ? p[3] + "/" + p[4] : p[3]
        var group = String(rest.prefix { $0 != "/" })
        if rest.hasPrefix("after_step/params/") { group = "after_step/params" } else if rest.hasPrefix("after_step/teacher/") { group = "after_step/teacher" }
        else if rest.hasPrefix("after_step/") { group = "after_step/centers" }
        return (p[1], p[2], group, rest)
    }

    /// Worst value over the metrics of a record selected by `key`, per group key.
    static func worst(_ r: RegressRecord, _ key: (String) -> String?) -> [String: Double] {
        var out: [String: Double] = [:]
        for (n, m) in r.metrics { if let k = key(n) { out[k] = max(out[k] ?? 0, m.value) } }
        return out
    }

    // MARK: the page

    public static func html(_ recs: [RegressRecord], thresholds: RegressThresholds) -> String {
        guard let latest = recs.last else { return "<!doctype html><title>no records</title>" }
        var h = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <title>sddit-oracle regression report</title>
        <style>
        body { font: 14px/1.4 sans-serif; margin: 20px; color: #222; max-width: 1240px; }
        h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 17px; margin: 26px 0 6px; border-bottom: 1px solid #ccc; }
        table { border-collapse: collapse; font-size: 12px; } td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
        th { background: #f3f3f3; } .num { text-align: right; font-family: monospace; } code, .mono { font-family: monospace; font-size: 12px; }
        .grid { display: flex; flex-wrap: wrap; gap: 8px; } .bad { color: #b00; font-weight: bold; } .good { color: #070; font-weight: bold; }
        .note { color: #555; font-size: 12px; } svg { background: #fff; border: 1px solid #e4e4e4; }
        </style></head><body>
        <h1>sddit-oracle regression report</h1>
        <p class="note">\(recs.count) record(s), \(esc(recs.first!.id)) … \(esc(latest.id)). Errors: max relative error of a tensor against the float64 reference under <code>oracle diff</code>'s rule (log scale). Self-contained page: no scripts, no network.</p>

        """
        h += latestSection(recs, thresholds: thresholds)
        h += "<h2>Per-layer error profile</h2>\n"
        h += "<p class=\"note\">Max relative error of each activation (SPEC §7 names, forward order), one line per precision mode; log scale. Exact agreement (0) is drawn at \(String(format: "%.0e", logZero)).</p>\n<div class=\"grid\">"
        for cfg in ["tiny", "S2"] {
            // the latest record that ran this config (S/2: the latest standard battery)
            guard let rec = recs.last(where: { r in r.metrics.keys.contains { $0.hasPrefix("error/\(cfg)/") } }) else { continue }
            var series: [Series] = []
            var names: [String] = []
            for mode in RegressBattery.modes.map(\.rawValue) {
                let acts = rec.metrics.filter { $0.key.hasPrefix("error/\(cfg)/\(mode)/activations/") }.sorted { ($0.value.order ?? 0) < ($1.value.order ?? 0) }
                guard !acts.isEmpty else { continue }
                if acts.count > names.count { names = acts.map { String($0.key.dropFirst("error/\(cfg)/\(mode)/activations/".count)) } }
                series.append(Series(mode, acts.enumerated().map { (Double($0.offset), $0.element.value.value) }))
            }
            guard !series.isEmpty else { continue }
            let which = rec.id == latest.id ? "latest run" : "record \(rec.id), the latest with \(cfg == "S2" ? "S/2" : cfg)"
            h += chart(title: "\(cfg == "S2" ? "SD-DiT-S/2 (batch 1)" : "tiny (batch 2)"): max rel error by activation (\(which))", series: series,
                       xLabels: names, rotate: true, log: true, width: 1220, height: 400, yLabel: "max rel error")
        }
        h += "</div>\n"
        h += historySection(recs)
        h += worstSection(recs)
        h += "<p class=\"note\">Thresholds: " + thresholds.notes.map(esc).joined(separator: " ") + "</p>\n"
        h += "</body></html>\n"
        return h
    }

    static func latestSection(_ recs: [RegressRecord], thresholds: RegressThresholds) -> String {
        let l = recs.last!
        var kinds: [String: Int] = [:]
        for k in l.metrics.keys { kinds[RegressRecord.kind(k), default: 0] += 1 }
        var s = "<h2>Latest run</h2>\n<table>\n"
        let rows: [(String, String)] = [
            ("record", l.id), ("date", l.date), ("commit", l.git.commit + (l.git.dirty ? " (dirty tree)" : "")),
            ("battery", "\(l.battery), \(String(format: "%.0f", l.durationS)) s"),
            ("machine", "\(l.machine.hostname): \(l.machine.cpu), \(l.machine.cores) cores, OpenBLAS \(l.machine.openblasCore), \(l.machine.threads) threads, Swift \(l.machine.swift)"),
            ("metrics", kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")),
        ]
        for (k, v) in rows { s += "<tr><th>\(k)</th><td class=\"mono\">\(esc(v))</td></tr>\n" }
        for n in l.notes { s += "<tr><th>note</th><td>\(esc(n))</td></tr>\n" }
        s += "</table>\n"
        if recs.count >= 2 {
            let res = RegressCheck.compare(baseline: recs[recs.count - 2], latest: l, thresholds: thresholds)
            s += "<p>Check against \(esc(res.baseline)): " + (res.passed ? "<span class=\"good\">no regression</span>" : "<span class=\"bad\">\(res.regressions.count) regression(s)</span>")
                + " (\(res.compared) metrics compared" + (res.timingsSkipped.map { "; timings not compared: " + esc($0) } ?? "") + ")</p>\n"
            if !res.passed {
                func short(_ m: String) -> String { errorParts(m)?.tensor ?? m }
                func x(_ f: RegressFinding) -> String { f.ratio.map { String(format: "x%.3g", $0) } ?? f.verdict.rawValue }
                s += "<table><tr><th>group</th><th>regressed</th><th>first in forward order</th><th>worst</th></tr>\n"
                for gsum in res.groupSummaries() {
                    s += "<tr><td class=\"mono\">\(esc(gsum.group))</td><td class=\"num bad\">\(gsum.regressed) of \(gsum.compared)</td>"
                    s += "<td class=\"mono\">\(esc(short(gsum.first.metric))) (\(x(gsum.first)))</td><td class=\"mono\">\(esc(short(gsum.worst.metric))) (\(x(gsum.worst)))</td></tr>\n"
                }
                s += "</table>\n<p class=\"note\">Each regression with both values: <code>oracle regress check --store ... --verbose</code>.</p>\n"
            }
        } else {
            s += "<p class=\"note\">Only one record: nothing to check against yet.</p>\n"
        }
        return s
    }

    static func historySection(_ recs: [RegressRecord]) -> String {
        let xl = recs.map { shortLabel($0) }
        var s = "<h2>History: worst error per group</h2>\n<p class=\"note\">For each record, the largest max-rel error over the tensors of a group, one line per precision mode (fixtures: per file).</p>\n<div class=\"grid\">"
        // the (config, group) pairs present anywhere, in a sensible order
        var pairs: [String] = []
        for r in recs { for n in r.metrics.keys { if let p = errorParts(n), p.config != "fixture" { let k = p.config + "|" + p.group; if !pairs.contains(k) { pairs.append(k) } } } }
        pairs.sort { a, b in
            let (ca, ga) = split2(a), (cb, gb) = split2(b)
            if ca != cb { return ca == "tiny" }
            // the pos_embed tables (group "params") last: they only check a formula
            func rank(_ g: String) -> Int { g == "params" ? 98 : groupOrder.firstIndex(of: g) ?? 99 }
            return (rank(ga), ga) < (rank(gb), gb)
        }
        for pair in pairs {
            let (cfg, group) = split2(pair)
            var series: [Series] = []
            for mode in RegressBattery.modes.map(\.rawValue) {
                let pts = recs.enumerated().compactMap { (i, r) -> (Double, Double)? in
                    let w = worst(r) { n in errorParts(n).flatMap { $0.config == cfg && $0.group == group && $0.mode == mode ? "x" : nil } }
                    return w["x"].map { (Double(i), $0) }
                }
                if !pts.isEmpty { series.append(Series(mode, pts)) }
            }
            h2chart(&s, chart(title: "\(cfg == "S2" ? "S/2" : cfg) \(group)", series: series, xLabels: xl, rotate: false, log: true,
                              width: 600, height: 260, yLabel: "worst max rel"))
        }
        // fixtures: one chart per backend, one line per file
        for backend in ["ref", "fast"] {
            var files: [String] = []
            for r in recs { for n in r.metrics.keys { if let p = errorParts(n), p.config == "fixture", p.mode == backend, !files.contains(p.group) { files.append(p.group) } } }
            let series = files.sorted().map { f in
                Series(f, recs.enumerated().compactMap { (i, r) -> (Double, Double)? in
                    worst(r) { n in errorParts(n).flatMap { $0.config == "fixture" && $0.mode == backend && $0.group == f ? "x" : nil } }["x"].map { (Double(i), $0) }
                })
            }.filter { !$0.points.isEmpty }
            if !series.isEmpty {
                h2chart(&s, chart(title: "fixtures rerun by \(backend): worst per file", series: series, xLabels: xl, rotate: false, log: true,
                                  width: 600, height: 260, yLabel: "worst max rel"))
            }
        }
        // gradient checks: worst and median
        let gw = recs.enumerated().compactMap { (i, r) -> (Double, Double)? in
            let v = r.metrics.filter { $0.key.hasPrefix("gradcheck/") }.map(\.value.value).sorted()
            return v.isEmpty ? nil : (Double(i), v.last!)
        }
        let gm = recs.enumerated().compactMap { (i, r) -> (Double, Double)? in
            let v = r.metrics.filter { $0.key.hasPrefix("gradcheck/") }.map(\.value.value).sorted()
            return v.isEmpty ? nil : (Double(i), v[v.count / 2])
        }
        if !gw.isEmpty {
            h2chart(&s, chart(title: "gradient checks (reference, tiny): rel err", series: [Series("worst", gw), Series("median", gm)],
                              xLabels: xl, rotate: false, log: true, width: 600, height: 260, yLabel: "rel err"))
        }
        s += "</div>\n<h2>History: timings</h2>\n<p class=\"note\">Median of repeated runs (ms, log scale); the shaded band is ± the spread of the repeats (1.4826 × median absolute deviation).</p>\n<div class=\"grid\">"
        for cfg in ["tiny", "S2"] {
            var names: [String] = []
            for r in recs { for n in r.metrics.keys where n.hasPrefix("timing/\(cfg)/") && !names.contains(n) { names.append(n) } }
            guard !names.isEmpty else { continue }
            let series = names.sorted().map { n in
                Series(String(n.dropFirst("timing/\(cfg)/".count)), recs.enumerated().compactMap { (i, r) in r.metrics[n].map { (Double(i), $0.value) } })
            }
            let bands = names.sorted().map { n in recs.enumerated().compactMap { (i, r) -> (Double, Double, Double)? in
                r.metrics[n].map { (Double(i), max($0.value - ($0.spread ?? 0), $0.value / 2), $0.value + ($0.spread ?? 0)) } } }
            h2chart(&s, chart(title: "\(cfg == "S2" ? "S/2 (batch 8)" : "tiny (batch 8)") timings", series: series, xLabels: xl, rotate: false, log: true,
                              width: 600, height: 300, yLabel: "ms", bands: bands))
        }
        s += "</div>\n"
        return s
    }

    static func worstSection(_ recs: [RegressRecord]) -> String {
        let l = recs.last!
        // closest to the tolerance (value / tol), errors only
        let top = l.metrics.filter { $0.key.hasPrefix("error/") && ($0.value.tol ?? 0) > 0 }
            .sorted { $0.value.value / $0.value.tol! > $1.value.value / $1.value.tol! }.prefix(15)
        var s = "<h2>Tensors closest to their tolerance (latest run)</h2>\n<table><tr><th>metric</th><th>max rel</th><th>max abs</th><th>rtol</th><th>of rtol</th><th>history (log)</th></tr>\n"
        for (n, m) in top {
            let hist = recs.compactMap { $0.metrics[n]?.value }
            s += "<tr><td class=\"mono\">\(esc(n))</td><td class=\"num\">\(g(m.value))</td><td class=\"num\">\(g(m.maxAbs ?? .nan))</td><td class=\"num\">\(g(m.tol!))</td>"
            s += "<td class=\"num\(m.pass == false ? " bad" : "")\">\(String(format: "%.2f", m.value / m.tol!))</td><td>\(sparkline(hist))</td></tr>\n"
        }
        s += "</table>\n"
        return s
    }

    // MARK: SVG

    static func h2chart(_ s: inout String, _ c: String) { s += c }

    static func sparkline(_ v: [Double]) -> String {
        let w = 120.0, hgt = 22.0
        let ys = v.map { log10(max($0, logZero)) }
        guard let lo = ys.min(), let hi = ys.max() else { return "" }
        let span = hi - lo
        // a constant history is a flat line through the middle
        let pts = ys.enumerated().map { (i, y) in
            String(format: "%.1f,%.1f", ys.count == 1 ? w / 2 : 2 + Double(i) * (w - 4) / Double(ys.count - 1),
                   span < 1e-9 ? hgt / 2 : hgt - 3 - (y - lo) / span * (hgt - 6))
        }
        return "<svg width=\"\(Int(w))\" height=\"\(Int(hgt))\" style=\"border:none\"><polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"\(pts.joined(separator: " "))\"/>"
            + (ys.count == 1 ? "<circle cx=\"\(w / 2)\" cy=\"\(hgt / 2)\" r=\"2\" fill=\"#1f77b4\"/>" : "") + "</svg>"
    }

    /// A line chart: x is an index into xLabels; y linear or log10. Legend on the right.
    public static func chart(title: String, series: [Series], xLabels: [String], rotate: Bool, log: Bool,
                             width: Int, height: Int, yLabel: String, bands: [[(Double, Double, Double)]] = []) -> String {
        // the legend takes what its longest name needs (about 6 px a character at 11 px)
        let legendW = max(150.0, 44 + 6.0 * Double(series.map(\.name.count).max() ?? 0)), left = 62.0, top = 26.0
        let bottom = rotate ? 125.0 : 40.0
        let W = Double(width), H = Double(height)
        let pw = W - left - legendW - 10, ph = H - top - bottom
        func ty(_ v: Double) -> Double { log ? log10(max(v, logZero)) : v }
        var ys = series.flatMap { $0.points.map { ty($0.1) } }.filter(\.isFinite)
        ys += bands.flatMap { $0.flatMap { [ty(max($0.1, 1e-300)), ty($0.2)] } }.filter(\.isFinite)
        var lo = ys.min() ?? 0, hi = ys.max() ?? 1
        if log { lo = Foundation.floor(lo); hi = Foundation.ceil(hi); if hi - lo < 1 { hi = lo + 1 } } else {
            if hi - lo < 1e-12 { hi = lo + 1 }
            let pad = (hi - lo) * 0.08; lo -= pad; hi += pad
        }
        let n = max(xLabels.count, 1)
        func px(_ x: Double) -> Double { n == 1 ? left + pw / 2 : left + x * pw / Double(n - 1) }
        func py(_ v: Double) -> Double {
            let t = ty(v)
            let c = t.isFinite ? min(max(t, lo), hi) : (t > 0 ? hi : lo)
            return top + ph - (c - lo) / (hi - lo) * ph
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" font-family=\"sans-serif\" font-size=\"11\">\n"
        s += "<text x=\"\(left)\" y=\"16\" font-size=\"13\" font-weight=\"bold\">\(esc(title))</text>\n"
        // y grid and ticks
        if log {
            let step = max(1, Int((hi - lo) / 8))
            for e in stride(from: Int(lo), through: Int(hi), by: step) {
                let y = top + ph - (Double(e) - lo) / (hi - lo) * ph
                s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", left, left + pw, y, y)
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n", left - 4, y + 4, e)
            }
        } else {
            for k in 0...5 {
                let v = lo + (hi - lo) * Double(k) / 5, y = top + ph - Double(k) / 5 * ph
                s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", left, left + pw, y, y)
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 4, y + 4, g(v))
            }
        }
        s += String(format: "<text transform=\"translate(12,%.1f) rotate(-90)\" text-anchor=\"middle\">%@</text>\n", top + ph / 2, esc(yLabel))
        // x ticks (thinned to fit)
        let maxTicks = rotate ? Int(pw / 12) : Int(pw / 125)
        let every = max(1, Int((Double(n) / Double(max(maxTicks, 1))).rounded(.up)))
        // every `every`-th label counted back from the last (the latest record is always labelled)
        for (i, lab) in xLabels.enumerated() where (n - 1 - i) % every == 0 {
            let x = px(Double(i))
            s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#f3f3f3\"/>", x, x, top, top + ph)
            if rotate {
                s += String(format: "<text transform=\"translate(%.1f,%.1f) rotate(-55)\" text-anchor=\"end\" font-size=\"10\">%@</text>\n", x + 3, top + ph + 10, esc(lab))
            } else {
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%@</text>\n", x, top + ph + 14, esc(lab))
            }
        }
        s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>\n", left, top, pw, ph)
        // spread bands
        for (j, b) in bands.enumerated() where b.count > 0 {
            let c = palette[j % palette.count]
            if b.count == 1 {
                let x = px(b[0].0)
                s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-opacity=\"0.35\" stroke-width=\"6\"/>", x, x, py(max(b[0].1, 1e-300)), py(b[0].2), c)
                continue
            }
            let up = b.map { String(format: "%.1f,%.1f", px($0.0), py($0.2)) }, down = b.reversed().map { String(format: "%.1f,%.1f", px($0.0), py(max($0.1, 1e-300))) }
            s += "<polygon fill=\"\(c)\" fill-opacity=\"0.15\" stroke=\"none\" points=\"\((up + down).joined(separator: " "))\"/>\n"
        }
        // lines and markers
        for (j, ser) in series.enumerated() {
            let c = palette[j % palette.count]
            let pts = ser.points.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }
            if pts.count > 1 { s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.6\" points=\"\(pts.joined(separator: " "))\"/>\n" }
            for p in ser.points where ser.points.count <= 60 {
                s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.4\" fill=\"%@\"><title>%@: %@</title></circle>", px(p.0), py(p.1), c,
                            esc(ser.name), esc(Int(p.0) < xLabels.count ? xLabels[Int(p.0)] + " " + g(p.1) : g(p.1)))
            }
            let ly = top + 6 + Double(j) * 16
            s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"2.5\"/>", left + pw + 12, left + pw + 30, ly, ly, c)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\">%@</text>\n", left + pw + 34, ly + 4, esc(ser.name))
        }
        if series.isEmpty { s += "<text x=\"\(left + 10)\" y=\"\(top + 20)\">no data</text>" }
        s += "</svg>\n"
        return s
    }

    static func shortLabel(_ r: RegressRecord) -> String {
        // "2026-11-30T00:22:14Z" + commit -> "11-30 00:22 e6a215c"
        let d = r.date
        let md = d.count >= 16 ? String(d.dropFirst(5).prefix(11)).replacingOccurrences(of: "T", with: " ") : d
        return md + " " + r.git.short
    }
    static func split2(_ s: String) -> (String, String) {
        let p = s.split(separator: "|", maxSplits: 1).map(String.init)
        return (p[0], p.count > 1 ? p[1] : "")
    }
    static func g(_ x: Double) -> String { x.isFinite ? String(format: "%.3g", x) : "\(x)" }
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
