/**
 * Domain errors. Services throw these; the API maps them to HTTP statuses and to the stable
 * body `{ error: { code, message } }` in one place (api/error-handler.ts).
 */
export const errorStatus = {
  INVALID_INPUT: 400,
  UNAUTHORIZED: 401,
  TOKEN_INVALID: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  AGENT_OFFLINE: 409,
  INTERNAL: 500,
} as const;

export type ErrorCode = keyof typeof errorStatus;

export class AppError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'AppError';
    this.code = code;
  }
}

export const notFound = (what: string) => new AppError('NOT_FOUND', `${what} not found`);
