// The error every creditgate failure is thrown as. Defined in JS (so that
// `instanceof Error` holds and stacks are native) and constructed from Rust
// (src/wasm.rs) through wasm-bindgen. The package's entry points re-export
// this very module, so `instanceof CreditError` holds for thrown errors.

/**
 * A creditgate failure: branch on `code`, never on `message`.
 *
 * - `code`: a stable snake_case code (docs/design.md's error table), e.g. "insufficient_credits".
 * - `status`: the HTTP status that code maps to (402 for insufficient_credits).
 * - `details`: a JSON object, e.g. `{ balance, needed }`; `{ field }` for invalid_argument.
 * - `retryable`: whether the same request may succeed later, unchanged.
 */
export class CreditError extends Error {
  constructor({ code, message, status, details = {}, retryable = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "CreditError";
    this.code = code;
    this.status = status;
    this.details = details;
    this.retryable = retryable;
  }

  /** The error body shape the HTTP API uses: `{"error": {code, message, details}}`'s inner object. */
  toJSON() {
    return { code: this.code, message: this.message, status: this.status, details: this.details, retryable: this.retryable };
  }
}
