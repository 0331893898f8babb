// An echo function for the Node.js Runtime Interface Client: returns the event it was given.
export const handler = async (event) => event;
