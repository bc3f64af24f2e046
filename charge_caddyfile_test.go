package edgelimit

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestCaddyfileCountsResponses: count_responses is Caddy's response
// matcher, inline or in a block; cost header names the header and keeps
// it on request; the JSON says so.
func TestCaddyfileCountsResponses(t *testing.T) {
	cfg, err := adapt(t, `:8080 {
	edge_limit {
		limit logins {
			key {edge_limit.basic_user}
			rate 5/15m
			count_responses status 401 5xx
		}
		limit challenged {
			rate 5/15m
			count_responses {
				status 4xx
				header WWW-Authenticate Basic*
			}
		}
		limit every {
			rate 5/15m
			count_responses
		}
		quota tokens {
			limit 1000000 per month
			cost header x-usage-tokens keep
		}
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	hs := handlersOf(t, cfg)
	if len(hs) != 1 || len(hs[0].Limits) != 4 {
		t.Fatalf("%+v", hs)
	}
	l := hs[0].Limits
	want := []*caddyhttp.ResponseMatcher{
		{StatusCode: []int{401, 5}},
		{StatusCode: []int{4}, Headers: map[string][]string{"Www-Authenticate": {"Basic*"}}},
		{},
		nil,
	}
	for i, w := range want {
		got, _ := json.Marshal(l[i].CountResponses)
		exp, _ := json.Marshal(w)
		if string(got) != string(exp) {
			t.Errorf("limit %s: count_responses %s, want %s", l[i].Name, got, exp)
		}
	}
	if l[3].CostHeader != "x-usage-tokens" || !l[3].KeepCostHeader || l[3].Cost != 0 {
		t.Errorf("cost header: %+v", l[3])
	}
	if !strings.Contains(string(cfg), `"count_responses":{"status_code":[401,5]}`) || !strings.Contains(string(cfg), `"cost_header":"x-usage-tokens","keep_cost_header":true`) {
		t.Errorf("JSON: %s", cfg)
	}
}

// TestCaddyfileCountsResponsesErrors: a bad response option is refused
// with its line.
func TestCaddyfileCountsResponsesErrors(t *testing.T) {
	for _, c := range []struct{ option, want string }{
		{"count_responses status abc", "Caddyfile:5"},
		{"count_responses status 999", "Caddyfile:5"},
		{"count_responses status 42", "class from 1xx to 5xx"},
		{"count_responses bogus 401", "unrecognized response matcher"},
		{"count_responses status", "Caddyfile:5"},
		{"cost header", "cost header needs the name"},
		{"cost header X-Usage junk", `unexpected "junk"`},
		{"cost header X-Usage keep more", "Caddyfile:5"},
		{"cost header X(Usage", "not a header name"},
		{"cost 2\n\t\t\tcost header X-Usage", `"cost" given twice`},
		{"cost 0", "at least 1"},
	} {
		_, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t\t"+c.option+"\n\t\t}\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.option, err, c.want)
		}
	}
}

// TestJSONChargeErrors: what the Caddyfile cannot write, JSON can: the
// handler refuses it.
func TestJSONChargeErrors(t *testing.T) {
	for _, c := range []struct{ limit, want string }{
		{`{"name":"a","limit":5,"window":"1m","cost":2,"cost_header":"X-Usage"}`, "either a cost or a cost header"},
		{`{"name":"a","limit":5,"window":"1m","keep_cost_header":true}`, "needs a cost header"},
		{`{"name":"a","limit":5,"window":"1m","count_responses":{"status_code":[0]}}`, "status 0"},
	} {
		var l Limit
		if err := json.Unmarshal([]byte(c.limit), &l); err != nil {
			t.Fatal(err)
		}
		if _, err := compileLimit(&l, "z"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.limit, err, c.want)
		}
	}
}
