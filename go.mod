module github.com/qwengo/qwengo

go 1.26
