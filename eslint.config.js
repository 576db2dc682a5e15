// Lint rules, including the architecture's boundaries (HOUSE_STYLE.md):
// only src/server/dataplane/ may import koffi; only services and server wiring
// import nice-grpc / grpc-js; the client imports nothing from the server.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

const koffi = { name: 'koffi', message: 'Only src/server/dataplane/ talks to the kernel (koffi).' };
const grpc = ['nice-grpc', 'nice-grpc-common', '@grpc/grpc-js'].map((name) => ({
  name,
  message: 'Only src/server/services/ and the server wiring use gRPC.',
}));

export default tseslint.config(
  { ignores: ['node_modules/', 'build/', 'dist/', 'src/gen/', 'coverage/'] },
  js.configs.recommended,
  { languageOptions: { globals: globals.node } },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/server/core/**/*.ts', 'src/server/net/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [koffi, ...grpc] }] },
  },
  {
    files: ['src/server/dataplane/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: grpc }] },
  },
  {
    files: ['src/server/services/**/*.ts', 'src/server/*.ts'],
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
