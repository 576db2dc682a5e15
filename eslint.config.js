// Lint rules, including the architecture's boundaries (docs/architecture.md, under the diagram):
// only src/server/dataplane/ may import koffi; only services and server wiring
// import nice-grpc / grpc-js; core/ owns its ports and imports nothing from
// dataplane/ or services/; services/ import nothing from dataplane/ (the
// wiring in src/server/*.ts connects them); the client imports nothing from
// the server. test/unit/boundaries.test.ts proves each rule rejects a violation.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

const koffi = { name: 'koffi', message: 'Only src/server/dataplane/ talks to the kernel (koffi).' };
const grpc = ['nice-grpc', 'nice-grpc-common', '@grpc/grpc-js'].map((name) => ({
  name,
  message: 'Only src/server/services/ and the server wiring use gRPC.',
}));

export default tseslint.config(
  { ignores: ['node_modules/', 'build/', 'dist/', 'packages/*/dist/', 'src/gen/', 'coverage/'] },
  js.configs.recommended,
  { languageOptions: { globals: globals.node } },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/server/core/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [koffi, ...grpc],
          patterns: [
            {
              group: ['**/dataplane/**', '**/services/**'],
              message:
                'core/ owns its ports and error kinds (core/dataplane.ts, core/errors.ts): it imports nothing from dataplane/ or services/.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src/server/net/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [koffi, ...grpc] }] },
  },
  {
    files: ['src/server/dataplane/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: grpc,
          patterns: [
            {
              group: ['**/services/**'],
              message: 'dataplane/ implements core ports; it imports nothing from services/.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src/server/services/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [koffi],
          patterns: [
            {
              group: ['**/dataplane/**'],
              message: 'services/ call the core; only the server wiring (src/server/*.ts) knows dataplane/.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src/server/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [koffi] }] },
  },
  {
    files: ['src/shared/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [koffi, ...grpc],
          patterns: [{ group: ['**/server/**'], message: 'Shared code imports nothing from src/server/.' }],
        },
      ],
    },
  },
  {
    files: ['src/client/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [koffi],
          patterns: [{ group: ['**/server/**'], message: 'The client imports nothing from src/server/.' }],
        },
      ],
    },
  },
  {
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: { '@typescript-eslint/no-non-null-assertion': 'off' },
  },
);
