package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
)

// board is what the tools read of a Grafana dashboard: its panels and
// their queries.
type board struct {
	Panels []panel `json:"panels"`
}

type panel struct {
	Title       string `json:"title"`
	FieldConfig struct {
		Defaults struct {
			Unit   string `json:"unit"`
			Custom struct {
				ScaleDistribution struct {
					Type string `json:"type"`
				} `json:"scaleDistribution"`
			} `json:"custom"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []target `json:"targets"`
}

type target struct {
	RefID        string `json:"refId"`
	Expr         string `json:"expr"`
	LegendFormat string `json:"legendFormat"`
}

func loadBoard(path string) (*board, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d board
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(d.Panels) == 0 {
		return nil, fmt.Errorf("%s: no panels", path)
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("%s: panel %q has no queries", path, p.Title)
		}
		for _, t := range p.Targets {
			if t.Expr == "" {
				return nil, fmt.Errorf("%s: panel %q: query %s is empty", path, p.Title, t.RefID)
			}
		}
	}
	return &d, nil
}

// rangeRe matches the range of a range vector selector, as in [1m].
var rangeRe = regexp.MustCompile(`\[[0-9]+[smh]\]`)

// withRange is expr with the range of each of its range vector selectors
// replaced by rng ("" leaves them as they are).
func withRange(expr, rng string) string {
	if rng == "" {
		return expr
	}
	return rangeRe.ReplaceAllString(expr, "["+rng+"]")
}

// legendRe matches a {{label}} of a legend format.
var legendRe = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

// legend is a series' name as Grafana writes it: the target's legend
// format with each {{label}} replaced by the series' value of it, or the
// series' labels when the format is empty.
func legend(format string, labels map[string]string, fallback string) string {
	if format == "" {
		return fallback
	}
	return legendRe.ReplaceAllStringFunc(format, func(m string) string {
		return labels[legendRe.FindStringSubmatch(m)[1]]
	})
}
