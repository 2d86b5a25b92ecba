package metrics

import (
	"bufio"
	"cmp"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// ContentType is the Prometheus text format, version 0.0.4, as
// client_golang's handler announced it.
const ContentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// label is one label pair.
type label struct{ name, value string }

// series is one sample line's labels and value.
type series struct {
	labels []label
	value  float64
}

// family is one metric family: what "# HELP" and "# TYPE" introduce.
// Counters and gauges carry series; histograms and summaries write their
// own lines (write).
type family struct {
	name, help, typ string
	series          []series
	write           func(w *textWriter) // histograms and summaries
}

// labelled turns counts keyed by label values (in names' order) into
// series.
func labelled[K [2]string | [4]string](names []string, counts map[K]uint64) []series {
	out := make([]series, 0, len(counts))
	for k, v := range counts {
		s := series{labels: make([]label, len(names)), value: float64(v)}
		for i, n := range names {
			s.labels[i] = label{n, k[i]}
		}
		out = append(out, s)
	}
	return out
}

// writeText writes the families in the Prometheus text format as
// client_golang did: families by name, label pairs by label name, series
// by their label values, and families without series left out.
func writeText(out io.Writer, fams []family) error {
	slices.SortFunc(fams, func(a, b family) int { return strings.Compare(a.name, b.name) })
	w := &textWriter{w: bufio.NewWriter(out)}
	for _, f := range fams {
		if len(f.series) == 0 && f.write == nil {
			continue
		}
		w.header(f.name, f.help, f.typ)
		if f.write != nil {
			f.write(w)
			continue
		}
		for i := range f.series {
			slices.SortFunc(f.series[i].labels, func(a, b label) int { return strings.Compare(a.name, b.name) })
		}
		slices.SortFunc(f.series, func(a, b series) int {
			for i := range min(len(a.labels), len(b.labels)) {
				if c := strings.Compare(a.labels[i].value, b.labels[i].value); c != 0 {
					return c
				}
			}
			return cmp.Compare(len(a.labels), len(b.labels))
		})
		for _, s := range f.series {
			w.sample(f.name, s.labels, formatFloat(s.value))
		}
	}
	return w.w.Flush()
}

// textWriter writes sample lines; the first write error sticks in the
// bufio.Writer and is returned by Flush.
type textWriter struct{ w *bufio.Writer }

func (w *textWriter) header(name, help, typ string) {
	w.w.WriteString("# HELP ")
	w.w.WriteString(name)
	w.w.WriteByte(' ')
	w.w.WriteString(escape(help, false))
	w.w.WriteString("\n# TYPE ")
	w.w.WriteString(name)
	w.w.WriteByte(' ')
	w.w.WriteString(typ)
	w.w.WriteByte('\n')
}

// sample writes `name{labels} value`; labels are written in the order given.
func (w *textWriter) sample(name string, labels []label, value string) {
	w.w.WriteString(name)
	if len(labels) > 0 {
		w.w.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				w.w.WriteByte(',')
			}
			w.w.WriteString(l.name)
			w.w.WriteString(`="`)
			w.w.WriteString(escape(l.value, true))
			w.w.WriteByte('"')
		}
		w.w.WriteByte('}')
	}
	w.w.WriteByte(' ')
	w.w.WriteString(value)
	w.w.WriteByte('\n')
}

// escape escapes a help text (backslash, newline) or a label value (also
// the double quote).
func escape(s string, quote bool) string {
	if !strings.ContainsAny(s, "\\\n\"") {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '"' && quote:
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// formatFloat writes a value as the text format does: shortest
// representation, with +Inf, -Inf and NaN spelled out.
func formatFloat(f float64) string {
	switch {
	case f == 1:
		return "1"
	case f == 0:
		return "0"
	case f == -1:
		return "-1"
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, +1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func formatUint(u uint64) string { return strconv.FormatUint(u, 10) }
