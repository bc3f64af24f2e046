// Package jsonbody reads the JSON body of an admin API request the same
// way for every admin route of this module: bounded in size, one object,
// no unknown fields.
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// TooLargeError is returned for a body of more than Max bytes.
type TooLargeError struct{ Max int }

func (e *TooLargeError) Error() string { return fmt.Sprintf("body larger than %d bytes", e.Max) }

// ErrTrailing is returned when the body holds more than one JSON value.
var ErrTrailing = errors.New("one JSON object, please")

// ReadError wraps a failure to read the body.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "reading the body: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Decode reads at most max bytes of body and decodes one JSON value into
// v, refusing unknown fields. Errors: *ReadError, *TooLargeError,
// ErrTrailing, or the decoder's own (a *json.UnmarshalTypeError names the
// field).
func Decode(body io.Reader, max int, v any) error {
	raw, err := io.ReadAll(io.LimitReader(body, int64(max)+1))
	if err != nil {
		return &ReadError{err}
	}
	if len(raw) > max {
		return &TooLargeError{max}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return ErrTrailing
	}
	return nil
}
