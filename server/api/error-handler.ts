import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ZodError } from 'zod';
import { AppError, errorStatus } from '../errors.ts';

/** The one place where errors become HTTP answers: `{ error: { code, message } }`. */
export function errorResponse(err: unknown, c: Context) {
  if (err instanceof AppError) {
    return c.json(
      { error: { code: err.code, message: err.message } },
      errorStatus[err.code] as ContentfulStatusCode,
    );
  }
  if (err instanceof ZodError) {
    const issue = err.issues[0];
    const where = issue?.path.length ? `${issue.path.join('.')}: ` : '';
    return c.json(
      { error: { code: 'INVALID_INPUT', message: `${where}${issue?.message ?? 'invalid input'}` } },
      400,
    );
  }
  if (err instanceof HTTPException) {
    return c.json({ error: { code: 'INVALID_INPUT', message: err.message } }, err.status);
  }
  c.get('log')?.error({ err }, 'request failed');
  return c.json({ error: { code: 'INTERNAL', message: 'internal error; see the server log' } }, 500);
}
