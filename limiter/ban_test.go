package limiter

import (
	"strings"
	"testing"
	"time"
)

// A ban: denies past the window, reported by Peek, lifted by nothing but
// its end; a limit without a ban sees a banned state as fresh.
func TestBan(t *testing.T) {
	l := Limit{Algorithm: FixedWindow, Quota: 1, Window: time.Minute, Ban: time.Hour}
	const now = int64(1_000_000_000_000_000) // on a minute
	var s State
	var r Result
	DecideBan(&l, &s, &r, now, 1, 0)
	if !r.Allowed || r.Banned {
		t.Fatalf("first: %+v", r)
	}
	DecideBan(&l, &s, &r, now+1, 1, 0)
	end := now + 1 + time.Hour.Microseconds()
	if r.Allowed || !r.Banned || !r.FirstDenial || r.ResetAt != end || r.RetryAfter != time.Hour || s.Expires != end {
		t.Fatalf("the ban: %+v %+v", r, s)
	}
	later := now + 2*time.Minute.Microseconds()
	if p := l.Peek(s, later, 1); p.Allowed || !p.Banned || p.ResetAt != end || p.Remaining != 0 {
		t.Fatalf("peek: %+v", p)
	}
	var given State = s
	if n := l.Credit(&given, later, 5); n != 0 || given != s {
		t.Fatalf("credit gave %d to a ban: %+v", n, given)
	}
	DecideBan(&l, &s, &r, later, 1, 2)
	if !r.Allowed || !r.Banned || r.RetryAfter != 0 || s.Expires != end {
		t.Fatalf("a charge during the ban: %+v %+v", r, s)
	}
	DecideBan(&l, &s, &r, later, 1, 1)
	if r.Allowed || !r.Banned || r.FirstDenial {
		t.Fatalf("a check during the ban: %+v", r)
	}
	plain := l
	plain.Ban = 0
	fresh := s
	Decide(&plain, &fresh, &r, later, 1)
	if !r.Allowed || r.Banned {
		t.Fatalf("the ban lifted by a reload: %+v", r)
	}
}

func TestBanValidate(t *testing.T) {
	for ban, want := range map[time.Duration]string{
		-time.Second:                "ban must be whole seconds",
		time.Millisecond:            "ban must be whole seconds",
		1500 * time.Millisecond:     "ban must be whole seconds",
		MaxBan + time.Second:        "24 days",
		time.Second:                 "",
		MaxBan:                      "",
		10 * time.Minute:            "",
		2*time.Hour + 3*time.Second: "",
	} {
		err := Limit{Algorithm: TokenBucket, Quota: 5, Rate: 1, Window: time.Second, Ban: ban}.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("ban %s: %v, want %q", ban, err, want)
		}
	}
	if MaxBan/time.Second >= 1<<21 {
		t.Fatal("MaxBan does not fit the 21 bits the scripts give it")
	}
}
