package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Type() string       { return "STRING" }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, strconv.IntSize)
	if err != nil {
		return numErr("an integer", err)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Type() string   { return "INT" }

type floatValue float64

func (v *floatValue) Set(s string) error {
	x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return numErr("a number", err)
	}
	*v = floatValue(x)
	return nil
}
func (v *floatValue) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }
func (v *floatValue) Type() string   { return "FLOAT" }

// numErr turns strconv's "strconv.ParseInt: parsing "x": invalid syntax" into
// "want an integer" / "out of range".
func numErr(want string, err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("out of range")
	}
	return fmt.Errorf("want %s", want)
}

type boolValue bool

func (v *boolValue) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "t", "1", "yes", "y", "on":
		*v = true
	case "false", "f", "0", "no", "n", "off":
		*v = false
	default:
		return errors.New("want true or false")
	}
	return nil
}
func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) Type() string   { return "BOOL" }
func (v *boolValue) isBool() bool   { return true }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want a duration such as 500ms, 2s or 1m30s")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *durationValue) Type() string   { return "DURATION" }

// splitList splits comma-separated items, trimming spaces and dropping empties.
func splitList(s string) []string {
	var out []string
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}

type listValue struct {
	p       *[]string
	touched bool
}

func (v *listValue) Set(s string) error {
	if !v.touched {
		*v.p = nil
		v.touched = true
	}
	*v.p = append(*v.p, splitList(s)...)
	return nil
}
func (v *listValue) String() string { return "[" + strings.Join(*v.p, ",") + "]" }
func (v *listValue) Type() string   { return "LIST" }

type intListValue struct {
	p       *[]int
	touched bool
}

func (v *intListValue) Set(s string) error {
	var add []int
	for i, it := range splitList(s) {
		n, err := strconv.ParseInt(it, 0, strconv.IntSize)
		if err != nil {
			return fmt.Errorf("item %d %q: %v", i+1, it, numErr("an integer", err))
		}
		add = append(add, int(n))
	}
	if !v.touched {
		*v.p = nil
		v.touched = true
	}
	*v.p = append(*v.p, add...)
	return nil
}
func (v *intListValue) String() string {
	parts := make([]string, len(*v.p))
	for i, n := range *v.p {
		parts[i] = strconv.Itoa(n)
	}
	return "[" + strings.Join(parts, ",") + "]"
}
func (v *intListValue) Type() string { return "INTS" }

type choiceValue struct {
	p       *string
	choices []string
}

func (v *choiceValue) Set(s string) error {
	for _, c := range v.choices {
		if s == c {
			*v.p = s
			return nil
		}
	}
	shown := make([]string, len(v.choices))
	for i, c := range v.choices {
		shown[i] = c
		if c == "" {
			shown[i] = `""`
		}
	}
	return fmt.Errorf("want one of %s", strings.Join(shown, ", "))
}
func (v *choiceValue) String() string { return *v.p }

// Type lists the choices; an empty choice (the flag's "off" default) is
// left out.
func (v *choiceValue) Type() string {
	var cs []string
	for _, c := range v.choices {
		if c != "" {
			cs = append(cs, c)
		}
	}
	return strings.Join(cs, "|")
}
