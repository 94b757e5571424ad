// The HTTP crossings between wasm and JS, one call each (src/fetch.rs,
// src/api/js_handler.rs). Every string that crosses the boundary is copied
// and re-encoded, so a request's head, a response's headers and a fetch's
// headers cross as one string each, not one call per header: on the Edge
// Function's hot path the calls were a measurable share of the time
// (docs/design.md, "Performance").
//
// Header lists are "name\nvalue\nname\nvalue...": a header name or value
// never contains a newline (Headers rejects one), so "\n" separates safely.

function pairs(list) {
  const parts = list === "" ? [] : list.split("\n");
  const headers = [];
  for (let i = 0; i + 1 < parts.length; i += 2) headers.push([parts[i], parts[i + 1]]);
  return headers;
}

/**
 * `method\nurl` then, for each name of `names` ("\n"-separated), "\n" and
 * "-" if the request has no such header or "+" and its value.
 */
export function requestHead(request, names) {
  const headers = request.headers;
  let head = `${request.method}\n${request.url}`;
  for (const name of names.split("\n")) {
    const value = headers.get(name);
    head += value === null ? "\n-" : `\n+${value}`;
  }
  return head;
}

/** A `Response`; `body` null for none. */
export function makeResponse(status, headerList, body) {
  return new Response(body, { status, headers: pairs(headerList) });
}

/**
 * One `fetch`; resolves to "<status>\n<body text>". `body` null for none,
 * `signal` undefined or an AbortSignal.
 */
export async function fetchText(method, url, headerList, body, signal) {
  const response = await fetch(url, { method, headers: pairs(headerList), body, signal });
  return `${response.status}\n${await response.text()}`;
}
