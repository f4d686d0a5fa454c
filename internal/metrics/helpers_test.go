package metrics

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// gatherAndCompare gathers g, keeps the families named (all if none), and
// compares their text exposition with want's, both normalized (families by
// name, series by labels). It does the job of client_golang's
// testutil.GatherAndCompare, which needs a module (kylelemons/godebug) this
// project does not carry.
func gatherAndCompare(g prometheus.Gatherer, want io.Reader, names ...string) error {
	got, err := g.Gather()
	if err != nil {
		return fmt.Errorf("gather: %w", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	parsed, err := p.TextToMetricFamilies(want)
	if err != nil {
		return fmt.Errorf("parse expected exposition: %w", err)
	}
	var wanted []*dto.MetricFamily
	for _, mf := range parsed {
		wanted = append(wanted, mf)
	}
	gotText, err := exposition(filterFamilies(got, names))
	if err != nil {
		return err
	}
	wantText, err := exposition(filterFamilies(wanted, names))
	if err != nil {
		return err
	}
	if gotText != wantText {
		return fmt.Errorf("exposition differs\n--- got:\n%s\n--- want:\n%s", gotText, wantText)
	}
	return nil
}

func filterFamilies(mfs []*dto.MetricFamily, names []string) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, mf := range mfs {
		if len(names) == 0 || slices.Contains(names, mf.GetName()) {
			out = append(out, mf)
		}
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return out
}

func exposition(mfs []*dto.MetricFamily) (string, error) {
	var buf bytes.Buffer
	for _, mf := range mfs {
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return cmp.Compare(labelString(a), labelString(b)) })
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return "", fmt.Errorf("encode %s: %w", mf.GetName(), err)
		}
	}
	return buf.String(), nil
}

func labelString(m *dto.Metric) string {
	var sb strings.Builder
	for _, l := range m.GetLabel() {
		sb.WriteString(l.GetName() + "=" + l.GetValue() + ",")
	}
	return sb.String()
}

// lint runs promlint over everything g gathers.
func lint(g prometheus.Gatherer) ([]promlint.Problem, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather: %w", err)
	}
	return promlint.NewWithMetricFamilies(mfs).Lint()
}
