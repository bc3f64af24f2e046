package edgelimit

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// adapt turns a Caddyfile into JSON as `caddy adapt` does.
func adapt(t *testing.T, body string) ([]byte, error) {
	t.Helper()
	a := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	out, _, err := a.Adapt([]byte(body), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// handlersOf returns the edge_limit handlers of an adapted config.
func handlersOf(t *testing.T, cfg []byte) []Handler {
	t.Helper()
	var found []Handler
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "edge_limit" {
				b, _ := json.Marshal(x)
				var h Handler
				if err := json.Unmarshal(b, &h); err != nil {
					t.Fatal(err)
				}
				found = append(found, h)
				return
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var v any
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	walk(v)
	return found
}

func TestCaddyfileGoodForms(t *testing.T) {
	cfg, err := adapt(t, `:8080 {
	edge_limit {
		limit per_client {
			key {header.X-Api-Key} {client_ip}
			rate 5/1m
		}
		limit burst {
			key {client_ip}
			token_bucket 3 1/1s
		}
		limit anchored {
			rate 60/m
			window anchored
		}
		limit sliding {
			rate 100/1h
			window sliding
			cost 2
			dry_run
		}
		limit spaced {
			gcra 10/1s
			burst 20
		}
		limit spaced_rate {
			rate 5/1s
			gcra
		}
		limit daily {
			key {header.X-Plugin-Id}
			quota 10000 per day at 06:30 in Europe/Paris
			scope global
		}
		limit aligned {
			rate 10/1d
			offset 6h
		}
		status 420
		headers both time
		content_type text/plain
		body "slow down {edge_limit.name}"
		handle_errors
		dry_run
		zone api
		storage memory {
			max_keys 5000
			sweep_interval 30s
		}
	}
	respond "ok"
}`)
	if err != nil {
		t.Fatal(err)
	}
	hs := handlersOf(t, cfg)
	if len(hs) != 1 {
		t.Fatalf("%d handlers in %s", len(hs), cfg)
	}
	h := hs[0]
	if h.Status != 420 || h.Headers != "both" || !h.TimeHeader || h.ContentType != "text/plain" ||
		h.Body != "slow down {edge_limit.name}" || !h.HandleErrors || !h.DryRun || h.Zone != "api" {
		t.Fatalf("handler options: %+v", h)
	}
	if !strings.Contains(string(h.StorageRaw), `"backend":"memory"`) || !strings.Contains(string(h.StorageRaw), `"max_keys":5000`) {
		t.Fatalf("storage %s", h.StorageRaw)
	}
	n := func(algo string, limit int64, window time.Duration) Numbers {
		return Numbers{Algorithm: algo, Limit: limit, Window: caddy.Duration(window)}
	}
	want := map[string]Limit{
		"per_client":  {Key: []string{"{http.request.header.X-Api-Key}", "{http.vars.client_ip}"}, Numbers: n("fixed_window", 5, time.Minute)},
		"burst":       {Key: []string{"{http.vars.client_ip}"}, Numbers: Numbers{Algorithm: "token_bucket", Limit: 3, Refill: 1, Window: caddy.Duration(time.Second)}},
		"anchored":    {Numbers: n("anchored_window", 60, time.Minute)},
		"sliding":     {Numbers: n("sliding_window", 100, time.Hour), Cost: 2, DryRun: true},
		"spaced":      {Numbers: Numbers{Algorithm: "gcra", Limit: 20, Refill: 10, Window: caddy.Duration(time.Second)}},
		"spaced_rate": {Numbers: Numbers{Algorithm: "gcra", Limit: 5, Refill: 5, Window: caddy.Duration(time.Second)}},
		"daily": {Key: []string{"{http.request.header.X-Plugin-Id}"}, Scope: "global",
			Numbers: Numbers{Algorithm: "fixed_window", Limit: 10000, Calendar: &CalendarConfig{Period: "day", At: "06:30", TimeZone: "Europe/Paris"}}},
		"aligned": {Numbers: Numbers{Algorithm: "fixed_window", Limit: 10, Window: caddy.Duration(24 * time.Hour), Offset: caddy.Duration(6 * time.Hour)}},
	}
	if len(h.Limits) != len(want) {
		t.Fatalf("%d limits", len(h.Limits))
	}
	for _, l := range h.Limits {
		w, ok := want[l.Name]
		if !ok {
			t.Fatalf("unexpected limit %q", l.Name)
		}
		w.Name = l.Name
		a, _ := json.Marshal(l)
		b, _ := json.Marshal(w)
		if string(a) != string(b) {
			t.Errorf("limit %s:\n got %s\nwant %s", l.Name, a, b)
		}
		if _, err := compileLimit(l, "z"); err != nil {
			t.Errorf("limit %s does not compile: %v", l.Name, err)
		}
	}
}

func TestCaddyfileErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, body, want string
		line             string
	}{
		{"bad window", "limit a {\n\trate 5/xyz\n}", `rate "5/xyz": bad duration "xyz"`, "Caddyfile:4"},
		{"zero count", "limit a {\n\trate 0/1m\n}", `rate "0/1m": the count must be at least 1`, "Caddyfile:4"},
		{"negative capacity", "limit a {\n\ttoken_bucket -1 1/1s\n}", "token_bucket capacity must be at least 1, got -1", "Caddyfile:4"},
		{"unknown option", "limit a {\n\trate 5/1m\n\tburstt 3\n}", `unknown option "burstt" in limit "a"`, "Caddyfile:5"},
		{"unknown handler option", "limit a {\n\trate 5/1m\n}\nlimits 3", `unknown edge_limit option "limits"`, "Caddyfile:6"},
		{"no algorithm", "limit a {\n\tkey {client_ip}\n}", `limit "a": no algorithm`, "Caddyfile:3"},
		{"two algorithms", "limit a {\n\trate 5/1m\n\ttoken_bucket 3 1/1s\n}", "only one of", "Caddyfile:3"},
		{"no name", "limit {\n\trate 5/1m\n}", "limit needs a name", "Caddyfile:3"},
		{"bad name", "limit a\"b {\n\trate 5/1m\n}", "use letters, digits", "Caddyfile:3"},
		{"window without rate", "limit a {\n\ttoken_bucket 3 1/1s\n\twindow sliding\n}", "window sliding goes with rate", "Caddyfile:3"},
		{"unknown window", "limit a {\n\trate 5/1m\n\twindow rolling\n}", `window "rolling"`, "Caddyfile:5"},
		{"duplicate limit", "limit a {\n\trate 5/1m\n}\nlimit a {\n\trate 5/1m\n}", `limit "a" is declared twice`, "Caddyfile:8"},
		{"absurd window", "limit a {\n\trate 5/1000d\n}", "longer than the maximum", "Caddyfile:3"},
		{"tiny window", "limit a {\n\trate 5/1us\n}", "shorter than the minimum", "Caddyfile:3"},
		{"absurd quota", "limit a {\n\trate 99999999999999999999/1m\n}", "not a whole number", "Caddyfile:4"},
		{"huge quota", "limit a {\n\trate 9999999999999/1m\n}", "larger than the maximum", "Caddyfile:3"},
		{"bad status", "limit a {\n\trate 5/1m\n}\nstatus 200", "status 200", "Caddyfile:6"},
		{"bad headers", "limit a {\n\trate 5/1m\n}\nheaders fancy", `headers "fancy"`, "Caddyfile:6"},
		{"bad scope", "limit a {\n\trate 5/1m\n\tscope world\n}", `scope "world"`, "Caddyfile:5"},
		{"bad cost", "limit a {\n\trate 5/1m\n\tcost 0\n}", "cost must be at least 1", "Caddyfile:5"},
		{"bad zone", "limit a {\n\tquota 5 per day in Mars/Olympus\n}", "Mars/Olympus", "Caddyfile:4"},
		{"bad reset", "limit a {\n\tquota 5 per day at 25:00\n}", "HH:MM", "Caddyfile:4"},
		{"bad period", "limit a {\n\tquota 5 per fortnight\n}", "fortnight", "Caddyfile:4"},
		{"unknown storage", "limit a {\n\trate 5/1m\n}\nstorage floppy", `unknown storage "floppy"`, "Caddyfile:6"},
		{"bad storage option", "limit a {\n\trate 5/1m\n}\nstorage memory {\n\tmax_keyz 5\n}", `unknown memory storage option "max_keyz"`, "Caddyfile:7"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := ":8080 {\n\tedge_limit {\n" + indent(c.body) + "\n\t}\n\trespond ok\n}\n"
			_, err := adapt(t, body)
			if err == nil {
				t.Fatalf("accepted:\n%s", body)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) {
				t.Fatalf("error %q, want it to contain %q and %q\n%s", err, c.want, c.line, body)
			}
		})
	}
}

func indent(s string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = "\t\t" + lines[i]
	}
	return strings.Join(lines, "\n")
}

func TestCaddyfileZones(t *testing.T) {
	limit := "edge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t}\n\t}"
	cfg, err := adapt(t, ":8080 {\n\thandle /x {\n\t"+limit+"\n\t}\n\thandle /y {\n\t"+limit+"\n\t}\n}\n:8081 {\n\t"+strings.Replace(limit, "5/1m", "6/1m", 1)+"\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	hs := handlersOf(t, cfg)
	if len(hs) != 3 {
		t.Fatalf("%d handlers", len(hs))
	}
	zones := map[string]bool{}
	for _, h := range hs {
		if h.Zone == "" || zones[h.Zone] {
			t.Fatalf("zones not distinct: %v then %q", zones, h.Zone)
		}
		zones[h.Zone] = true
	}
	again, _ := adapt(t, ":8080 {\n\thandle /x {\n\t"+limit+"\n\t}\n\thandle /y {\n\t"+limit+"\n\t}\n}\n:8081 {\n\t"+strings.Replace(limit, "5/1m", "6/1m", 1)+"\n}\n")
	for _, h := range handlersOf(t, again) {
		if !zones[h.Zone] {
			t.Fatalf("zone %q changed between two adaptations", h.Zone)
		}
	}
}

func TestGlobalOption(t *testing.T) {
	cfg, err := adapt(t, "{\n\tedge_limit {\n\t\tstorage memory {\n\t\t\tmax_keys 100\n\t\t}\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	if got := string(v.Apps["edge_limit"]); got != `{"storage":{"backend":"memory","max_keys":100}}` {
		t.Fatalf("edge_limit app: %s", got)
	}
	_, err = adapt(t, "{\n\tedge_limit {\n\t\tlimits 3\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
	if err == nil || !strings.Contains(err.Error(), "Caddyfile:3") {
		t.Fatalf("bad global option: %v", err)
	}
}

func TestDirectiveOrder(t *testing.T) {
	// No order line: edge_limit runs before respond and reverse_proxy, after
	// basic_auth.
	cfg, err := adapt(t, `:8080 {
	respond "ok"
	edge_limit {
		limit a {
			rate 1/1m
		}
	}
	basic_auth {
		bob $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	s := string(cfg)
	auth, limit, respond := strings.Index(s, `"authentication"`), strings.Index(s, `"edge_limit"`), strings.Index(s, `"static_response"`)
	if auth < 0 || limit < 0 || respond < 0 || !(auth < limit && limit < respond) {
		t.Fatalf("order: authentication %d, edge_limit %d, respond %d in %s", auth, limit, respond, s)
	}
}

func TestCompileTemplate(t *testing.T) {
	cases := map[string]string{
		`{"status":{edge_limit.status}}`:   `\{"status":{edge_limit.status}\}`,
		`{ "a": {http.request.uri.path} }`: `\{ "a": {http.request.uri.path} \}`,
		`\{literal\}`:                      `\{literal\}`,
		`{}`:                               `\{\}`,
		`{file./etc/x}`:                    `{file./etc/x}`,
		`{1bad}`:                           `\{1bad\}`,
	}
	for in, want := range cases {
		if got := compileTemplate(in); got != want {
			t.Errorf("compileTemplate(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestProvisionRejects(t *testing.T) {
	sec := caddy.Duration(time.Second)
	cases := []struct {
		h    Handler
		want string
	}{
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5}}}}, "shorter than the minimum"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Algorithm: "leaky", Limit: 5, Window: sec}}}}, "unknown algorithm"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Algorithm: "token_bucket", Limit: 5, Window: sec}}}}, "refill rate"},
		{Handler{Limits: []*Limit{{Name: "", Numbers: Numbers{Limit: 5, Window: sec}}}}, "needs a name"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Key: []string{""}}}}, "empty key part"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, Headers: "loud"}, "headers"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, ShowKey: "plain"}, "show_key"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, Use: []string{"nope"}}, "no such limit"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{http.vars.tier}", Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "no known tier need numbers"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{http.vars.tier}", DefaultTier: "T9", Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "not one of the tiers"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "tier placeholder"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{t}", Numbers: Numbers{Limit: 5, Window: sec}, Tiers: map[string]*Numbers{"T1": {Algorithm: "token_bucket", Limit: 5, Refill: 1, Window: sec}}}}}, "one algorithm"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec, Split: caddy.Duration(7 * time.Millisecond)}}}}, "equal parts"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Exempt: []string{"a"}}}}, "cannot exempt itself"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Status: 302}}}, "status 302"},
	}
	for _, c := range cases {
		err := validateHandler(t, &c.h)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.h, err, c.want)
		}
	}
	if err := (&Handler{Status: 302}).Validate(); err == nil {
		t.Error("status 302 accepted")
	}
}

// validateHandler provisions a handler inside a whole config, as `caddy
// validate` does.
func validateHandler(t *testing.T, h *Handler) error {
	t.Helper()
	raw, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	_ = json.Unmarshal(raw, &obj)
	obj["handler"] = "edge_limit"
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
			"listen": []string{"127.0.0.1:0"},
			"routes": []any{map[string]any{"handle": []any{obj}}},
		}}}},
	}
	b, _ := json.Marshal(cfg)
	var c caddy.Config
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&c)
}

func TestJSONConfigDefaults(t *testing.T) {
	l := &Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}}
	cl, err := compileLimit(l, "z")
	if err != nil {
		t.Fatal(err)
	}
	if cl.limit.Algorithm != limiter.FixedWindow || cl.cost != 1 || len(cl.keys) != 1 || cl.keys[0].kind != keyClientIP {
		t.Fatalf("defaults: %+v", cl)
	}
	if cl.counters[0] != "r/z/a/fixed_window#0" {
		t.Fatalf("counter %q", cl.counters[0])
	}
	g, _ := compileLimit(&Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}, Scope: "global"}, "z")
	if g.counters[0] != "g/a/fixed_window#0" {
		t.Fatalf("global counter %q", g.counters[0])
	}
}

// TestCaddyValidateCommand runs the real `caddy validate` on bad and good
// Caddyfiles, as an operator would.
func TestCaddyValidateCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the caddy binary")
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	run := func(body string) (string, error) {
		f := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "validate", "--config", f, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(":0 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/xyz\n\t\t}\n\t}\n\trespond ok\n}\n")
	if err == nil || !strings.Contains(out, `bad duration \"xyz\"`) || !strings.Contains(out, "Caddyfile:4") {
		t.Fatalf("bad Caddyfile: err %v\n%s", err, out)
	}
	example, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(string(example)); err != nil {
		t.Fatalf("example.Caddyfile does not validate: %v\n%s", err, out)
	}
	// The JSON form the README documents adapts from the example.
	cmd := exec.Command(bin, "adapt", "--config", "example.Caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	js, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy adapt: %v", err)
	}
	if !strings.Contains(string(js), `"handler":"edge_limit"`) || !strings.Contains(string(js), `"algorithm":"token_bucket"`) {
		t.Fatalf("adapted example: %s", js)
	}
	if err := caddyconfig.GetAdapter("caddyfile"); err == nil {
		t.Fatal("no caddyfile adapter")
	}
}
