package blocks

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseID(t *testing.T) {
	const uuid = "GPU-8c1b2f3a-1111-2222-3333-444455556666"
	tests := map[string]struct {
		id       string
		wantUUID string
		wantN    int
		wantErr  bool
	}{
		"block 0":             {id: uuid + "::0", wantUUID: uuid, wantN: 0},
		"block 7":             {id: uuid + "::7", wantUUID: uuid, wantN: 7},
		"block 99":            {id: uuid + "::99", wantUUID: uuid, wantN: 99},
		"short uuid":          {id: "x::42", wantUUID: "x", wantN: 42},
		"block 100":           {id: uuid + "::100", wantErr: true},
		"leading zero":        {id: uuid + "::07", wantErr: true},
		"double zero":         {id: uuid + "::00", wantErr: true},
		"plus sign":           {id: uuid + "::+7", wantErr: true},
		"minus sign":          {id: uuid + "::-1", wantErr: true},
		"negative zero":       {id: uuid + "::-0", wantErr: true},
		"empty number":        {id: uuid + "::", wantErr: true},
		"empty uuid":          {id: "::3", wantErr: true},
		"single colon":        {id: uuid + ":3", wantErr: true},
		"no separator":        {id: uuid, wantErr: true},
		"triple colon":        {id: uuid + ":::3", wantErr: true},
		"two separators":      {id: "GPU-a::1::2", wantErr: true},
		"space in number":     {id: uuid + ":: 3", wantErr: true},
		"trailing space":      {id: uuid + "::3 ", wantErr: true},
		"space in uuid":       {id: "GPU a::3", wantErr: true},
		"hex number":          {id: uuid + "::a", wantErr: true},
		"unicode digit":       {id: uuid + "::٣", wantErr: true},
		"empty":               {id: "", wantErr: true},
		"whole-GPU id (uuid)": {id: uuid, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			gotUUID, gotN, err := ParseID(tc.id)
			if tc.wantErr {
				require.Error(t, err)
				require.ErrorIs(t, err, ErrInvalidID)
				require.Contains(t, err.Error(), strconv.Quote(tc.id), "the error names the ID")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantUUID, gotUUID)
			require.Equal(t, tc.wantN, gotN)
			require.Equal(t, tc.id, FormatID(gotUUID, gotN))
		})
	}
}

func TestFormatID(t *testing.T) {
	require.Equal(t, "GPU-abc::0", FormatID("GPU-abc", 0))
	require.Equal(t, "GPU-abc::99", FormatID("GPU-abc", 99))
}

// FuzzParseID checks the round trip both ways: every accepted ID is the
// FormatID of what it parses to, and every FormatID of a valid UUID and
// block number parses back.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"GPU-8c1b::0", "GPU-8c1b::99", "GPU-8c1b::100", "::1", "a:::1", "a::01", "a::-1", "a::+1", "", "::", "a::1::2"} {
		f.Add(s, 0)
	}
	f.Add("GPU-8c1b", 42)
	f.Fuzz(func(t *testing.T, s string, n int) {
		uuid, got, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidID) {
				t.Fatalf("ParseID(%q) error %v does not wrap ErrInvalidID", s, err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("ParseID(%q) error %q does not name the ID", s, err)
			}
		} else {
			if got < 0 || got >= PerGPU || uuid == "" {
				t.Fatalf("ParseID(%q) = %q, %d: out of range", s, uuid, got)
			}
			if back := FormatID(uuid, got); back != s {
				t.Fatalf("ParseID(%q) = %q, %d, formats back as %q", s, uuid, got, back)
			}
		}
		// The other direction, with s as a UUID.
		if checkUUID(s) != nil || n < 0 || n >= PerGPU {
			return
		}
		u2, n2, err := ParseID(FormatID(s, n))
		if err != nil || u2 != s || n2 != n {
			t.Fatalf("ParseID(FormatID(%q, %d)) = %q, %d, %v", s, n, u2, n2, err)
		}
	})
}

func TestParsePolicy(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    Policy
		wantErr bool
	}{
		"binpack":       {in: "binpack", want: Binpack},
		"spread":        {in: "spread", want: Spread},
		"empty default": {in: "", want: Binpack},
		"capitalised":   {in: "Binpack", wantErr: true},
		"typo":          {in: "sprad", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParsePolicy(tc.in)
			if tc.wantErr {
				require.ErrorIs(t, err, ErrUnknownPolicy)
				require.Contains(t, err.Error(), strconv.Quote(tc.in))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)

			var p Policy
			require.NoError(t, p.UnmarshalText([]byte(tc.in)))
			require.Equal(t, tc.want, p)
			text, err := p.MarshalText()
			require.NoError(t, err)
			require.Equal(t, tc.want.String(), string(text))
		})
	}
	_, err := Policy(7).MarshalText()
	require.ErrorIs(t, err, ErrUnknownPolicy)
}

func TestErrorsTruncateLongIDs(t *testing.T) {
	r, _ := newTestResource(t, 2, Binpack, nil)
	long := strings.Repeat("x", 3<<20)
	cases := map[string]func() error{
		"ParseID no separator": func() error { _, _, err := ParseID(long); return err },
		"ParseID long UUID":    func() error { _, _, err := ParseID(long + "::100"); return err },
		"ParseID long number":  func() error { _, _, err := ParseID("GPU-a0::" + long); return err },
		"ParseID bad UUID":     func() error { _, _, err := ParseID(long + " ::1"); return err },
		"Allocate malformed":   func() error { _, err := r.Allocate([]string{long}); return err },
		"Allocate unknown GPU": func() error { _, err := r.Allocate([]string{"GPU-" + long + "::1"}); return err },
		"Prefer required":      func() error { _, err := r.Prefer(nil, []string{long}, 1); return err },
	}
	for name, call := range cases {
		t.Run(name, func(t *testing.T) {
			err := call()
			require.Error(t, err)
			require.Less(t, len(err.Error()), 1024, "%.300s", err)
			require.Contains(t, err.Error(), " bytes)")
		})
	}
}
