package jsonbody

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	type obj struct {
		A int `json:"a"`
	}
	var v obj
	if err := Decode(strings.NewReader(`{"a": 7}`), 16, &v); err != nil || v.A != 7 {
		t.Fatalf("%v %+v", err, v)
	}
	var tl *TooLargeError
	if err := Decode(strings.NewReader(`{"a": 7}        `), 8, &v); !errors.As(err, &tl) || err.Error() != "body larger than 8 bytes" {
		t.Errorf("too large: %v", err)
	}
	if err := Decode(strings.NewReader(`{"a": 7} {}`), 64, &v); !errors.Is(err, ErrTrailing) {
		t.Errorf("two values: %v", err)
	}
	if err := Decode(strings.NewReader(`{"b": 7}`), 64, &v); err == nil || !strings.Contains(err.Error(), `unknown field "b"`) {
		t.Errorf("unknown field: %v", err)
	}
	var te *json.UnmarshalTypeError
	if err := Decode(strings.NewReader(`{"a": "x"}`), 64, &v); !errors.As(err, &te) || te.Field != "a" {
		t.Errorf("wrong type: %v", err)
	}
}
