"""Dispatch: what a request asks for. The model named in the body, query or
form; which endpoints name one; the profile pins and selectors that rewrite
that name; the filters that rewrite the body before it is forwarded."""
