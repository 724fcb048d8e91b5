"""The Jupyter protocol's own conformance suite (jupyter_kernel_test) with
every sample attribute set."""
import unittest

import jupyter_kernel_test


class QwengoKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = "qwengo"
    language_name = "go"
    file_extension = ".go"

    code_hello_world = 'fmt.Println("hello, world")'
    code_stderr = 'fmt.Fprintln(os.Stderr, "to stderr")'

    # Matches replace the text between cursor_start and cursor_end.
    completion_samples = [
        {"text": "strings.ToUpp", "matches": {"ToUpper", "ToUpperSpecial"}},
        {"text": "fmt.Sprin", "matches": {"Sprint", "Sprintf", "Sprintln"}},
    ]

    complete_code_samples = ['x := 1', 'fmt.Println("hi")', 'func f() int { return 1 }', 'type T struct{ A int }']
    incomplete_code_samples = ['func f() {', 'for i := 0; i < 3; i++ {', 'x := []int{1,', 'if true {\n  fmt.Println(1)']
    invalid_code_samples = ['x := )', '}', 'func 1() {}']

    code_generate_error = 'panic("on purpose")'

    code_execute_result = [
        {"code": "1+1", "result": "2"},
        {"code": '"go" + "pher"', "result": "gopher"},
        {"code": "3.5 * 2", "result": "7"},
        {"code": "[]int{1, 2, 3}", "result": "[1 2 3]"},
    ]
    code_display_data = [
        {"code": 'display.HTML("<b>bold</b>")', "mime": "text/html"},
        {"code": 'display.Markdown("# title")', "mime": "text/markdown"},
        {"code": 'display.SVG(`<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>`)', "mime": "image/svg+xml"},
    ]

    # Must match exactly one of code_execute_result's codes (glob).
    code_history_pattern = "1?1"
    supported_history_operations = ("tail", "range", "search")

    code_inspect_sample = "fmt.Println"
    code_clear_output = "display.Clear(false)"


if __name__ == "__main__":
    unittest.main()
