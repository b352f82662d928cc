package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// table prints aligned columns: the first column left-aligned, the others right-aligned.
type table struct {
	header []string
	rows   [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) print(w io.Writer) {
	width := make([]int, len(t.header))
	for _, r := range append([][]string{t.header}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(t.header)
	rule := make([]string, len(width))
	for i, n := range width {
		rule[i] = strings.Repeat("-", n)
	}
	line(rule)
	for _, r := range t.rows {
		line(r)
	}
}

// printResult prints a suite's rows as a table, then its notes. The value column is headed
// by the unit when every row shares one.
func printResult(w io.Writer, res Result) {
	unit := ""
	for i, r := range res.Rows {
		if i == 0 {
			unit = r.Unit
		} else if r.Unit != unit {
			unit = ""
		}
	}
	valueHeader := unit
	if unit == "" {
		valueHeader = "value"
	}
	t := table{header: []string{res.Suite, valueHeader, "p50 ms", "p99 ms", "vs target"}}
	for _, r := range res.Rows {
		value := thousands(r.Value)
		if unit == "" {
			value += " " + r.Unit
		}
		target := "-"
		if r.Target != nil && r.Pass != nil {
			verdict := "FAIL"
			if *r.Pass {
				verdict = "PASS"
			}
			limit := ""
			if r.AtMost {
				limit = "max "
			}
			target = fmt.Sprintf("%s (%.0f%% of %s%s)", verdict, 100*r.Value / *r.Target, limit, thousands(*r.Target))
			if *r.Target == 0 {
				target = fmt.Sprintf("%s (%s0)", verdict, limit)
			}
		}
		t.add(r.Name, value, millis(r.P50ms), millis(r.P99ms), target)
	}
	t.print(w)
	for _, n := range res.Notes {
		fmt.Fprintln(w, "  "+n)
	}
}

func millis(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', 2, 64)
}

// thousands formats v rounded to a whole number with comma separators: 12,345; a number
// below 100 that is not whole keeps one decimal: 11.1.
func thousands(v float64) string {
	if v < 100 && v != float64(int64(v)) {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
