package main

import (
	"context"
	"fmt"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// instant evaluates expr now, through Prometheus's /api/v1/query, and
// returns its series (a scalar is one series without labels).
func (s *stack) instant(ctx context.Context, expr string) (model.Vector, error) {
	v, _, _, err := s.api.Query(ctx, expr, time.Now())
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	switch v := v.(type) {
	case model.Vector:
		return v, nil
	case *model.Scalar:
		return model.Vector{{Value: v.Value, Timestamp: v.Timestamp}}, nil
	}
	return nil, fmt.Errorf("query %q: a %s, not a vector", expr, v.Type())
}

// series evaluates expr from start to end every step, through
// Prometheus's /api/v1/query_range.
func (s *stack) series(ctx context.Context, expr string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	v, _, _, err := s.api.QueryRange(ctx, expr, promv1.Range{Start: start, End: end, Step: step})
	if err != nil {
		return nil, fmt.Errorf("query_range %q: %w", expr, err)
	}
	m, ok := v.(model.Matrix)
	if !ok {
		return nil, fmt.Errorf("query_range %q: a %s, not a matrix", expr, v.Type())
	}
	return m, nil
}

// await evaluates expr every 250 ms until it returns a series that ok
// accepts (any, for a nil ok), or until the deadline.
func (s *stack) await(ctx context.Context, expr string, deadline time.Time, ok func(model.Vector) bool) (model.Vector, error) {
	for {
		v, err := s.instant(ctx, expr)
		if err == nil && len(v) > 0 && (ok == nil || ok(v)) {
			return v, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("query %q: %v, still not what was awaited", expr, v)
			}
			return v, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// positive accepts a result with a value above zero.
func positive(v model.Vector) bool {
	for _, x := range v {
		if x.Value > 0 {
			return true
		}
	}
	return false
}
