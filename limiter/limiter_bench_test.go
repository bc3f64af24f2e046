package limiter

import (
	"testing"
	"time"
)

func BenchmarkTake(b *testing.B) {
	limits := []Limit{
		{Algorithm: FixedWindow, Quota: 1 << 30, Window: time.Minute},
		{Algorithm: AnchoredWindow, Quota: 1 << 30, Window: time.Minute},
		{Algorithm: SlidingWindow, Quota: 1 << 30, Window: time.Minute},
		{Algorithm: TokenBucket, Quota: 1 << 30, Rate: 1000, Window: time.Second},
		{Algorithm: GCRA, Quota: 1 << 30, Rate: 1000, Window: time.Second},
		{Algorithm: FixedWindow, Quota: 1 << 30, Calendar: CalendarWindow{Period: Day}.Cached()},
	}
	for _, l := range limits {
		name := l.Algorithm.String()
		if l.Calendar != nil {
			name = "calendar_day"
		}
		b.Run(name, func(b *testing.B) {
			var s State
			var r Result
			now := base
			b.ReportAllocs()
			for b.Loop() {
				now++
				l.Take(&s, &r, now, 1)
			}
		})
	}
}
