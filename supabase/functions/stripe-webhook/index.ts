// The `stripe-webhook` Edge Function: Stripe purchases grant credits exactly
// once. Signature verification (Stripe-Signature on the raw body), event
// handling and the one database call per event are Rust (src/api/stripe.rs),
// compiled to the same wasm module as the `credits` function (pkg/, copied
// next to this file by scripts/build-pkg.sh); this file only wires it to Deno.
//
// Deployed with verify_jwt = false: Stripe sends no Supabase JWT, the
// Stripe-Signature header is the authentication. Supabase's documented
// pattern for Stripe webhooks:
// https://supabase.com/docs/guides/functions/examples/stripe-webhooks
// @ts-types="./pkg/index.d.ts"
import { createStripeHandler } from "./pkg/deno.js";

// Built once per instance; a malformed CREDITGATE_STRIPE_PRICES or
// CREDITGATE_STRIPE_PLANS stops the function from starting.
const handler = createStripeHandler(Deno.env.toObject());

Deno.serve((request: Request) => handler.handle(request));
