package policy

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func TestParseCost(t *testing.T) {
	cases := []struct {
		in    string
		n     int64
		found int
	}{
		{"0", 0, CostOK},
		{"17", 17, CostOK},
		{" \t42 ", 42, CostOK},
		{"0007", 7, CostOK},
		{"1099511627776", limiter.MaxQuota, CostOK},
		{"1099511627777", limiter.MaxQuota, CostTooLarge},
		{"99999999999999999999999999999999", limiter.MaxQuota, CostTooLarge},
		{"-5", 1, CostInvalid},
		{"+5", 1, CostInvalid},
		{"1.5", 1, CostInvalid},
		{"1e3", 1, CostInvalid},
		{"12 tokens", 1, CostInvalid},
		{"99999999999999999999999x", 1, CostInvalid},
		{"", 1, CostInvalid},
		{"  ", 1, CostInvalid},
		{"٣", 1, CostInvalid}, // an Arabic-Indic digit is not a digit here
	}
	for _, c := range cases {
		n, found := ParseCost(c.in)
		if n != c.n || found != c.found {
			t.Errorf("ParseCost(%q) = %d, %d; want %d, %d", c.in, n, found, c.n, c.found)
		}
	}
	if CostProblem(CostInvalid) == "" || CostProblem(CostTooLarge) == "" || CostProblem(CostOK) != "" || CostProblem(CostMissing) != "" {
		t.Error("CostProblem")
	}
}

func chargedPolicy(t *testing.T, specs ...*Spec) *Policy {
	t.Helper()
	var limits []*Limit
	for _, s := range specs {
		l, err := Compile(s, "g")
		if err != nil {
			t.Fatal(err)
		}
		limits = append(limits, l)
	}
	p, err := New(limits, &Responses{Headers: "both"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCompileCharge(t *testing.T) {
	base := Numbers{Limit: 10, Window: time.Minute}
	bad := []*Spec{
		{Name: "a", Numbers: base, CostHeader: "X-Usage", Cost: 3},
		{Name: "a", Numbers: base, CostHeader: "X Usage"},
		{Name: "a", Numbers: base, KeepCostHeader: true},
	}
	for _, s := range bad {
		if _, err := Compile(s, "g"); err == nil {
			t.Errorf("%+v compiles", s)
		}
	}
	p := chargedPolicy(t,
		&Spec{Name: "plain", Numbers: base},
		&Spec{Name: "logins", Numbers: base, Charged: true, Cost: 2},
		&Spec{Name: "tokens", Numbers: base, CostHeader: "x-usage-tokens"},
	)
	if !p.Charges || p.Limits[2].CostHeader != "X-Usage-Tokens" || !p.Limits[2].Charged {
		t.Fatalf("%+v", p.Limits[2])
	}
	d := NewDecision(p)
	for i := range d.Parts {
		d.Keys[i], d.Parts[i] = "k", 0
	}
	Plan(p, d, nil)
	want := []struct {
		mode store.Mode
		cost int64
	}{{store.ModeTake, 1}, {store.ModeCheck, 2}, {store.ModeCheck, 1}}
	for i, w := range want {
		if d.Reqs[i].Mode != w.mode || d.Reqs[i].Cost != w.cost {
			t.Errorf("request %d: mode %d cost %d, want %d %d", i, d.Reqs[i].Mode, d.Reqs[i].Cost, w.mode, w.cost)
		}
	}
	for i := range d.Res {
		d.Res[i] = limiter.Result{Allowed: true, Limit: 10, Remaining: 9 - int64(i), Reset: time.Minute}
	}
	Judge(d)
	// The checks are among what was decided, and have nothing to give
	// back.
	if c := withoutChecks(Counted(d)); len(c) != 1 || c[0].Counter != d.Reqs[0].Counter {
		t.Fatalf("counted %+v: checks count nothing", c)
	}
	if !Checked(d) {
		t.Fatal("Checked")
	}
	if Checked(NewDecision(chargedPolicy(t, &Spec{Name: "plain", Numbers: base}))) {
		t.Fatal("a plain policy checks")
	}
}

// TestRewriteHeaders: after the charges, the X-RateLimit headers report
// the tightest limit of the request (an earlier handler's when tighter),
// and this decision's items of RateLimit are replaced between those of
// the handlers before and after it.
func TestRewriteHeaders(t *testing.T) {
	base := Numbers{Limit: 10, Window: time.Minute}
	p := chargedPolicy(t, &Spec{Name: "plain", Numbers: base}, &Spec{Name: "tokens", Numbers: base, CostHeader: "X-Usage"})
	d := NewDecision(p)
	for i := range d.Parts {
		d.Keys[i], d.Parts[i] = "k", 0
	}
	Plan(p, d, nil)
	d.Res[0] = limiter.Result{Allowed: true, Limit: 10, Remaining: 6, Reset: 30 * time.Second, ResetAt: 30e6, Window: time.Minute}
	d.Res[1] = limiter.Result{Allowed: true, Limit: 10, Remaining: 8, Reset: 30 * time.Second, ResetAt: 30e6, Window: time.Minute}
	_, report := Judge(d)
	hdr := http.Header{"Ratelimit": {`"earlier";r=50;t=9`}}
	WriteHeaders(p, hdr, d, report, false, nil)
	hdr["Ratelimit"] = []string{hdr["Ratelimit"][0] + `, "later";r=40;t=9`}
	if got := hdr.Get("X-Ratelimit-Remaining"); got != "6" {
		t.Fatalf("before the charge: %s", got)
	}
	headerValue, found := ResponseCost(p.Limits[1], http.Header{"X-Usage": {"7"}})
	if headerValue != 7 || found != CostOK {
		t.Fatal(headerValue, found)
	}
	ResetCharges(d)
	AddCharge(d, 1, headerValue)
	if d.Charges[0].Mode != store.ModeCharge || d.Charges[0].Cost != 7 || d.Charges[0].Counter != d.Reqs[1].Counter {
		t.Fatalf("%+v", d.Charges[0])
	}
	d.ChargeRes[0] = limiter.Result{Allowed: true, Limit: 10, Remaining: 1, Reset: 30 * time.Second, ResetAt: 30e6, Window: time.Minute}
	report = Charged(d)
	RewriteHeaders(p, hdr, d, report, nil)
	if got := hdr.Get("X-Ratelimit-Remaining"); got != "1" {
		t.Fatalf("after the charge: %s", got)
	}
	if got, want := hdr.Get("Ratelimit"), `"earlier";r=50;t=9, "plain";r=6;t=30, "tokens";r=1;t=30, "later";r=40;t=9`; got != want {
		t.Fatalf("RateLimit %s, want %s", got, want)
	}
	// A tighter limit of an earlier handler keeps its headers.
	hdr.Set("X-Ratelimit-Remaining", "0")
	prior := &Ledger{Report: limiter.Result{Limit: 3, Remaining: 0}, HasReport: true}
	RewriteHeaders(p, hdr, d, report, prior)
	if got := hdr.Get("X-Ratelimit-Remaining"); got != "0" || strings.Count(hdr.Get("Ratelimit"), "tokens") != 1 {
		t.Fatalf("%v", hdr)
	}
}

func TestMatchResponse(t *testing.T) {
	rule := &ResponseRule{Statuses: []int{401, 4}, Headers: map[string][]string{"X-Login": {"fail*"}, "X-Skip": nil}}
	cases := []struct {
		status int
		hdr    http.Header
		want   bool
	}{
		{401, http.Header{"X-Login": {"failed"}}, true},
		{429, http.Header{"X-Login": {"ok", "failure"}}, true},
		{500, http.Header{"X-Login": {"failed"}}, false},
		{401, http.Header{}, false},
		{401, http.Header{"X-Login": {"failed"}, "X-Skip": {""}}, false},
	}
	for _, c := range cases {
		if got := MatchResponse(rule, c.status, c.hdr); got != c.want {
			t.Errorf("%d %v: %v", c.status, c.hdr, got)
		}
	}
	if !MatchResponse(&ResponseRule{}, 200, nil) {
		t.Error("an empty rule matches every response")
	}
	for _, p := range []struct{ v, p string }{{"abc", "*"}, {"abc", "*b*"}, {"abc", "*bc"}, {"abc", "ab*"}, {"abc", "abc"}} {
		if !matchPattern(p.v, p.p) {
			t.Errorf("%q does not match %q", p.v, p.p)
		}
	}
	for _, s := range []string{"401", "4xx", " 5xx", "4"} {
		if _, err := ParseStatus(s); err != nil {
			t.Error(s, err)
		}
	}
	for _, s := range []string{"99", "600", "6xx", "x", "0"} {
		if _, err := ParseStatus(s); err == nil {
			t.Error(s, "parses")
		}
	}
}

func TestNewResponseRule(t *testing.T) {
	rule, err := NewResponseRule([]string{"401", "5xx"}, map[string]string{"x-login": "fail*", "!x-skip": ""})
	if err != nil {
		t.Fatal(err)
	}
	want := &ResponseRule{Statuses: []int{401, 5}, Headers: map[string][]string{"X-Login": {"fail*"}, "X-Skip": nil}}
	if !reflect.DeepEqual(rule, want) {
		t.Errorf("%+v, want %+v", rule, want)
	}
	for _, bad := range []struct {
		statuses []string
		headers  map[string]string
	}{
		{[]string{"6xx"}, nil},
		{nil, map[string]string{"!X-Skip": "b"}},
		{nil, map[string]string{"X Bad": "*"}},
	} {
		if _, err := NewResponseRule(bad.statuses, bad.headers); err == nil {
			t.Errorf("%v %v: accepted", bad.statuses, bad.headers)
		}
	}
}

// chargeLog is a ChargeLog that keeps what it is told.
type chargeLog struct {
	failed []error
	issues []CostIssue
}

func (l *chargeLog) ChargeFailed(err error)  { l.failed = append(l.failed, err) }
func (l *chargeLog) BadCost(issue CostIssue) { l.issues = append(l.issues, issue) }

// failingTakes fails every Take.
type failingTakes struct{ store.Store }

func (failingTakes) Take(context.Context, time.Time, []store.Request, []limiter.Result) error {
	return store.ErrUnavailable
}

// TestChargeRespond: a Charge charges a response once, when it is final
// (not 1xx, but 101), what its cost header says; it removes the cost
// header whatever happens; a denial of a later handler is charged
// nothing; what it meets goes to the edge's log.
func TestChargeRespond(t *testing.T) {
	base := Numbers{Limit: 10, Window: time.Minute}
	p := chargedPolicy(t, &Spec{Name: "tokens", Numbers: base, CostHeader: "X-Usage"})
	now := time.Unix(1_700_000_000, 0)
	mem := store.NewMemory(store.MemoryOptions{})
	checked := func() *Decision {
		d := NewDecision(p)
		d.Keys[0], d.Parts[0] = "client", 0
		Plan(p, d, nil)
		if err := store.Take(mem, context.Background(), now, d.Reqs, d.Res); err != nil {
			t.Fatal(err)
		}
		if denied, _ := Judge(d); denied >= 0 || !Checked(d) {
			t.Fatalf("denied %d", denied)
		}
		return d
	}
	log := &chargeLog{}
	clock := func() time.Time { return now }
	c := &Charge{Policy: p, Store: mem, Log: log, Decision: checked(), Ledger: &Ledger{}}
	hdr := http.Header{"X-Usage": {"7"}}
	if c.Respond(context.Background(), clock, http.StatusContinue, hdr) || c.Done || hdr.Get("X-Usage") != "7" {
		t.Fatal("a 1xx response is charged")
	}
	if !c.Respond(context.Background(), clock, http.StatusOK, hdr) || !c.Done {
		t.Fatal("a 200 is not charged")
	}
	if got := hdr.Get("X-Ratelimit-Remaining"); got != "3" || hdr["X-Usage"] != nil {
		t.Fatalf("after a charge of 7: remaining %q, %v", got, hdr)
	}
	hdr["X-Usage"] = []string{"7"}
	if c.Respond(context.Background(), clock, http.StatusOK, hdr) || hdr.Get("X-Usage") != "7" {
		t.Fatal("charged twice")
	}
	if len(log.failed) != 0 || len(log.issues) != 0 {
		t.Fatalf("log %+v", log)
	}

	// 101 is final; a cost that is not a number is charged 1 and logged.
	c = &Charge{Policy: p, Store: mem, Log: log, Decision: checked()}
	hdr = http.Header{"X-Usage": {"seven"}}
	if !c.Respond(context.Background(), clock, http.StatusSwitchingProtocols, hdr) || hdr.Get("X-Ratelimit-Remaining") != "2" {
		t.Fatalf("101: %v", hdr)
	}
	if len(log.issues) != 1 || log.issues[0].Found != CostInvalid || log.issues[0].Value != "seven" {
		t.Fatalf("issues %+v", log.issues)
	}
	if got, want := log.issues[0].String(), `(limit tokens, header X-Usage, value "seven")`; !strings.HasPrefix(got, CostProblem(CostInvalid)) || !strings.HasSuffix(got, want) {
		t.Fatalf("issue %q", got)
	}

	// A later handler denied: nothing charged, the header removed all the
	// same; so without a decision.
	for _, c := range []*Charge{
		{Policy: p, Store: mem, Log: log, Decision: checked(), Ledger: &Ledger{Denied: true}},
		{Policy: p, Store: mem, Log: log},
	} {
		hdr = http.Header{"X-Usage": {"5"}}
		if !c.Respond(context.Background(), clock, http.StatusOK, hdr) || len(hdr) != 0 {
			t.Fatalf("uncharged response: %v", hdr)
		}
	}
	if d := checked(); d.Res[0].Remaining != 2 {
		t.Fatalf("remaining %d, want 2: the uncharged responses were charged", d.Res[0].Remaining)
	}

	// A store that fails: logged, the header removed.
	c = &Charge{Policy: p, Store: failingTakes{}, Log: log, Decision: checked()}
	hdr = http.Header{"X-Usage": {"1"}}
	if !c.Respond(context.Background(), clock, http.StatusOK, hdr) || len(log.failed) != 1 || hdr["X-Usage"] != nil {
		t.Fatalf("failed %v, %v", log.failed, hdr)
	}
}
